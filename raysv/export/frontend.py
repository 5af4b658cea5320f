"""The front-end of an exported encoder: 16 kHz waveform -> log-mel fbank, in the graph.

``raysv embed`` computes features with :func:`raysv.audio.features.fbank`
(torchaudio's Kaldi fbank: 25 ms Hamming frames every 10 ms, DC offset removed,
pre-emphasis 0.97, 512-point power spectrum, log mel energies, per-utterance mean
subtracted). Every step up to the power spectrum is linear in a frame's 400
samples, so here it is one strided convolution whose weights are that linear map
(computed in float64), followed by the mel matrix, the log and the mean: only
Conv, MatMul, Log and ReduceMean, which ONNX and TorchScript export with dynamic
batch and time axes (torch.fft does not export to every runtime).

Length policy (the same everywhere raysv embeds, :func:`prepare_wave`): at most
``max_seconds`` (10 s) from the centre, cut (centre) to a multiple of
``bucket_seconds`` (0.1 s); a wave shorter than one bucket is repeated to one
bucket. The exported graph embeds the whole waveform it is given; apply
:func:`prepare_wave` first for the embedding ``raysv embed`` gives.
"""

from __future__ import annotations

import numpy as np

from raysv.audio import features, io

SAMPLE_RATE = io.TARGET_SR
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms
N_FFT = 512  # Kaldi rounds the frame up to a power of two
PREEMPHASIS = 0.97
MAX_SECONDS = 10.0  # raysv embed's --max-seconds default
BUCKET_SECONDS = 0.1  # raysv.embedding.torch_embedder.BUCKET_SECONDS


def frame_matrix() -> np.ndarray:
    """``(FRAME_LENGTH, 2 * (N_FFT // 2 + 1))`` float64: a frame's samples -> the real
    and imaginary parts of its spectrum after DC removal, pre-emphasis and the
    Hamming window (Kaldi's order); columns ``[:257]`` real, ``[257:]`` imaginary."""
    n = FRAME_LENGTH
    eye = np.eye(n)
    x = eye - eye.mean(axis=1, keepdims=True)  # row i: the response to sample i
    prev = np.concatenate([x[:, :1], x[:, :-1]], axis=1)  # x[j-1], x[0] for j = 0
    x = x - PREEMPHASIS * prev
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / (n - 1))  # symmetric Hamming
    x = x * window
    k = np.arange(N_FFT // 2 + 1)
    angle = 2 * np.pi * np.outer(np.arange(n), k) / N_FFT  # zero padding: rows >= n vanish
    return np.concatenate([x @ np.cos(angle), -(x @ np.sin(angle))], axis=1)


def mel_matrix(n_mels: int) -> np.ndarray:
    """``(N_FFT // 2 + 1, n_mels)`` float64: Kaldi's mel banks (20 Hz to Nyquist), the
    Nyquist bin's column zero as torchaudio pads it."""
    from torchaudio.compliance import kaldi

    banks, _ = kaldi.get_mel_banks(n_mels, N_FFT, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0)
    banks = banks.double().numpy()  # (n_mels, N_FFT // 2)
    return np.concatenate([banks, np.zeros((n_mels, 1))], axis=1).T


def prepare_wave(
    wave: np.ndarray, max_seconds: float = MAX_SECONDS, bucket_seconds: float = BUCKET_SECONDS
) -> np.ndarray:
    """``(T,)`` float32 at 16 kHz -> ``(T',)``: the samples ``raysv embed`` embeds.

    At most ``max_seconds`` from the centre, then the centre multiple of
    ``bucket_seconds`` (at least one bucket: shorter waves are repeated).
    """
    from raysv.embedding.torch_embedder import bucket_length

    cap = int(max_seconds * SAMPLE_RATE)
    bucket = int(bucket_seconds * SAMPLE_RATE)
    if wave.shape[0] > cap:
        off = (wave.shape[0] - cap) // 2
        wave = wave[off : off + cap]
    return features.crop(wave, bucket_length(wave.shape[0], bucket, cap))


def read_wave(
    path: str,
    start_s: float | None = None,
    end_s: float | None = None,
    max_seconds: float = MAX_SECONDS,
    bucket_seconds: float = BUCKET_SECONDS,
) -> np.ndarray:
    """``(T',)`` float32: one utterance (file or segment) read as ``raysv embed`` reads
    it (only the centre ``max_seconds`` decoded), then :func:`prepare_wave`.
    Raises :class:`~raysv.errors.AudioError` for a missing or unreadable file."""
    wave = io.read_crop(path, max_seconds, None, start_s, end_s)
    return prepare_wave(wave, max_seconds, bucket_seconds)


def build_fbank(n_mels: int):
    """The front-end module: ``wave (B, T) float32 -> fbank (B, frames, n_mels)``,
    ``frames = 1 + (T - 400) // 160`` (T >= 400)."""
    import torch
    from torch import nn

    class Fbank(nn.Module):
        def __init__(self):
            super().__init__()
            w = torch.from_numpy(frame_matrix().T.astype(np.float32)).unsqueeze(1)
            self.register_buffer("frames", w)  # (514, 1, 400)
            self.register_buffer("mel", torch.from_numpy(mel_matrix(n_mels).astype(np.float32)))
            self.bins = N_FFT // 2 + 1

        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            x = nn.functional.conv1d(wave.unsqueeze(1) * 32768.0, self.frames, stride=FRAME_SHIFT)
            re, im = x[:, : self.bins], x[:, self.bins :]
            power = (re * re + im * im).transpose(1, 2)  # (B, frames, 257)
            logmel = torch.clamp(power @ self.mel, min=float(np.finfo(np.float32).eps)).log()
            return logmel - logmel.mean(dim=1, keepdim=True)

    return Fbank()


def build_wave_encoder(encoder, n_mels: int):
    """``wave (B, T) float32 at 16 kHz -> embedding (B, D)``: :func:`build_fbank` then
    ``encoder`` (``(B, frames, n_mels) -> (B, D)``), in eval mode."""
    from torch import nn

    class WaveEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fbank = build_fbank(n_mels)
            self.encoder = encoder

        def forward(self, wave):
            return self.encoder(self.fbank(wave))

    return WaveEncoder().eval()
