"""Crops and log-mel filterbank features (Kaldi-compatible, via torchaudio).

Shapes: waves are ``(T,)`` float32 at 16 kHz; features are ``(frames, n_mels)``
float32 with ``frames = 1 + (T - 400) // 160`` for the 25 ms / 10 ms default.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from raysv.audio.io import TARGET_SR


def crop(
    wave: np.ndarray,
    n_samples: int,
    rng: np.random.Generator | None = None,
    pad: Literal["repeat", "zero"] = "repeat",
) -> np.ndarray:
    """Return exactly ``n_samples`` of ``wave`` (shape ``(T,)``).

    Longer waves: a random window (``rng`` given) or the centre window (``rng``
    None). Shorter waves are padded by repetition (default, as speaker-recognition
    recipes do, so statistics pooling sees no silence) or with zeros.
    """
    if n_samples <= 0:
        raise ValueError(f"crop length must be positive, got {n_samples}")
    t = wave.shape[0]
    if t == 0:
        raise ValueError("cannot crop an empty wave")
    if t >= n_samples:
        off = int(rng.integers(0, t - n_samples + 1)) if rng is not None else (t - n_samples) // 2
        return wave[off : off + n_samples]
    if pad == "zero":
        out = np.zeros(n_samples, dtype=wave.dtype)
        out[:t] = wave
        return out
    reps = -(-n_samples // t)
    return np.tile(wave, reps)[:n_samples]


def fbank(
    wave: np.ndarray,
    n_mels: int = 80,
    sample_rate: int = TARGET_SR,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    mean_norm: bool = True,
) -> np.ndarray:
    """Kaldi log-mel filterbank of a mono wave ``(T,)`` -> ``(frames, n_mels)`` float32.

    The wave is scaled to the int16 range first, as Kaldi does, and no dither
    is added (features are deterministic). With ``mean_norm`` the per-utterance
    mean of each bin is subtracted (CMN), which also removes the scale.
    """
    import torch
    from torchaudio.compliance import kaldi

    min_len = int(sample_rate * frame_length_ms / 1000)
    if wave.shape[0] < min_len:
        raise ValueError(
            f"wave of {wave.shape[0]} samples is shorter than one {frame_length_ms} ms frame"
        )
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).unsqueeze(0) * 32768.0
    feats = kaldi.fbank(
        x,
        num_mel_bins=n_mels,
        frame_length=frame_length_ms,
        frame_shift=frame_shift_ms,
        dither=0.0,
        sample_frequency=float(sample_rate),
        window_type="hamming",
        energy_floor=0.0,
    )
    if mean_norm:
        feats = feats - feats.mean(dim=0, keepdim=True)
    return feats.numpy()


def num_frames(
    n_samples: int,
    sample_rate: int = TARGET_SR,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> int:
    """Number of fbank frames for ``n_samples`` (Kaldi ``snip_edges`` convention)."""
    win = int(sample_rate * frame_length_ms / 1000)
    hop = int(sample_rate * frame_shift_ms / 1000)
    return 0 if n_samples < win else 1 + (n_samples - win) // hop
