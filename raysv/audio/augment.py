"""Augmentation: additive noise / music / babble at a random SNR, and reverberation.

Sources are read from a MUSAN-layout folder (``noise/``, ``music/``,
``speech/`` sub-folders, any depth below) and an RIR folder (any audio files
below it). Without folders, synthetic sources stand in: coloured noise,
random tone mixtures for music, modulated speech-shaped noise for babble,
and exponentially decaying noise for room impulse responses.

All functions are pure over float32 mono arrays ``(T,)`` at 16 kHz and take a
``numpy.random.Generator``; the :class:`Augmenter` only holds file lists.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve, lfilter

from raysv.audio import io
from raysv.audio.features import crop
from raysv.config import config, setting

SR = io.TARGET_SR


@config
class AugmentConfig:
    """Augmentation settings.

    Args:
        prob: probability that an utterance is augmented at all.
        reverb_prob: probability of reverberation (given augmentation).
        noise_dir: MUSAN-layout folder; None = synthetic noise/music/babble.
        rir_dir: folder of room impulse responses; None = synthetic RIRs.
        noise_snr / music_snr / babble_snr: SNR ranges in dB (Kaldi/wespeaker values).
    """

    prob: float = setting(
        0.6,
        ge=0,
        le=1,
        why="the iterative paper's rate for pseudo-label training; raysv pretrain/train "
        "data default to 0.5 (not tuned)",
    )
    reverb_prob: float = setting(
        0.3,
        ge=0,
        le=1,
        why="not from a paper: a minority of augmented utterances reverberated "
        "(every one gets noise)",
    )
    noise_dir: str | None = setting(
        None, why="null: synthetic noise, music and babble, so it runs with no MUSAN copy"
    )
    rir_dir: str | None = setting(
        None, why="null: synthetic room impulse responses, so it runs with no RIR corpus"
    )
    noise_snr: tuple[float, float] = setting(
        (0.0, 15.0), why="Kaldi's VoxCeleb recipe and wespeaker: noise at 0-15 dB"
    )
    music_snr: tuple[float, float] = setting(
        (5.0, 15.0), why="Kaldi's VoxCeleb recipe and wespeaker: music at 5-15 dB"
    )
    babble_snr: tuple[float, float] = setting(
        (13.0, 20.0), why="Kaldi's VoxCeleb recipe and wespeaker: babble at 13-20 dB"
    )

    def __post_init__(self):
        for name in ("noise_snr", "music_snr", "babble_snr"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} range is empty: {lo} > {hi}")


def _power(x: np.ndarray) -> float:
    return float(np.mean(x.astype(np.float64) ** 2)) + 1e-12


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix ``noise`` (cropped/tiled to ``wave``'s length) into ``wave`` at ``snr_db`` dB."""
    noise = crop(noise, wave.shape[0], None) if noise.shape[0] != wave.shape[0] else noise
    scale = np.sqrt(_power(wave) / (_power(noise) * 10.0 ** (snr_db / 10.0)))
    return (wave + scale * noise).astype(np.float32)


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve ``wave`` with ``rir`` (aligned at its direct-path peak), same length and power."""
    rir = rir.astype(np.float64)
    peak = int(np.argmax(np.abs(rir)))
    rir = rir[peak:] / (np.linalg.norm(rir) + 1e-12)
    out = fftconvolve(wave.astype(np.float64), rir)[: wave.shape[0]]
    out *= np.sqrt(_power(wave) / _power(out))
    return out.astype(np.float32)


def synthetic_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink or brown noise of ``n`` samples (unit variance)."""
    white = rng.standard_normal(n)
    kind = rng.integers(0, 3)
    if kind == 1:  # pink-ish: one-pole smoothing mix
        white = lfilter([1.0], [1.0, -0.9], white) * 0.3 + white * 0.7
    elif kind == 2:  # brown
        white = lfilter([1.0], [1.0, -0.99], white)
    return (white / (white.std() + 1e-12)).astype(np.float32)


def synthetic_music(n: int, rng: np.random.Generator) -> np.ndarray:
    """A few sustained harmonic tones with note changes: music-like interference."""
    t = np.arange(n) / SR
    out = np.zeros(n)
    note_len = int(SR * rng.uniform(0.2, 0.6))
    for start in range(0, n, note_len):
        stop = min(n, start + note_len)
        f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12.0)
        env = np.hanning(stop - start) if stop - start > 2 else np.ones(stop - start)
        for h in range(1, 5):
            out[start:stop] += env * np.sin(2 * np.pi * f0 * h * t[start:stop]) / h
    return (out / (out.std() + 1e-12)).astype(np.float32)


def synthetic_babble(n: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-shaped noise with syllable-rate amplitude modulation, 3-6 'talkers' summed."""
    out = np.zeros(n)
    t = np.arange(n) / SR
    for _ in range(int(rng.integers(3, 7))):
        src = lfilter([1.0], [1.0, -0.95], rng.standard_normal(n))  # speech-like tilt
        rate = rng.uniform(3.0, 6.0)
        env = 0.5 * (1 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
        out += src * env
    return (out / (out.std() + 1e-12)).astype(np.float32)


def synthetic_rir(rng: np.random.Generator, rt60: float | None = None) -> np.ndarray:
    """Exponentially decaying noise tail with a direct path: a room impulse response."""
    rt60 = rt60 if rt60 is not None else rng.uniform(0.2, 0.8)
    n = int(SR * rt60)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    tail[0] = 4.0 * np.abs(tail).max()  # direct path dominates
    return tail.astype(np.float32)


class Augmenter:
    """Applies random noise and reverberation, from folders or synthetic sources.

    Holds only file lists; audio is read on demand (so it is cheap to copy to
    Ray workers). ``__call__(wave, rng) -> wave`` keeps shape ``(T,)``.
    """

    KINDS = ("noise", "music", "babble")

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.sources: dict[str, list[str]] = {k: [] for k in self.KINDS}
        self._banks: dict[str, list[np.ndarray]] = {}
        self.rirs: list[str] = []
        if cfg.noise_dir:
            from raysv.data.fs import walk_files

            folders = {"noise": "noise", "music": "music", "babble": "speech"}
            for kind, sub in folders.items():
                root = f"{cfg.noise_dir.rstrip('/')}/{sub}"
                from raysv.data.fs import is_dir

                if is_dir(root):
                    self.sources[kind] = list(walk_files(root, io.AUDIO_SUFFIXES))
            if not any(self.sources.values()):
                raise ValueError(
                    f"{cfg.noise_dir}: no audio under noise/, music/ or speech/ (MUSAN layout expected)"
                )
        if cfg.rir_dir:
            from raysv.data.fs import walk_files

            self.rirs = list(walk_files(cfg.rir_dir, io.AUDIO_SUFFIXES))
            if not self.rirs:
                raise ValueError(f"{cfg.rir_dir}: no audio files found for room impulse responses")

    # Synthetic sources are made once per process into a small bank (clips of
    # BANK_SECONDS, seeded) and then randomly cropped: generating babble or
    # music per utterance would cost more than decoding the utterance itself.
    BANK_SIZE = 16
    BANK_SECONDS = 6.0

    def _bank(self, kind: str) -> list[np.ndarray]:
        if kind not in self._banks:
            rng = np.random.default_rng([7, len(kind)])
            n = int(self.BANK_SECONDS * SR)
            if kind == "rir":
                self._banks[kind] = [synthetic_rir(rng) for _ in range(self.BANK_SIZE)]
            else:
                maker = {
                    "noise": synthetic_noise,
                    "music": synthetic_music,
                    "babble": synthetic_babble,
                }
                self._banks[kind] = [maker[kind](n, rng) for _ in range(self.BANK_SIZE)]
        return self._banks[kind]

    def _source(self, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
        files = self.sources[kind]
        if files:
            path = files[int(rng.integers(0, len(files)))]
            return crop(io.read_crop(path, n / SR, rng), n, rng)
        bank = self._bank(kind)
        return crop(bank[int(rng.integers(0, len(bank)))], n, rng)

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.cfg.prob:
            return wave
        if rng.random() < self.cfg.reverb_prob:
            if self.rirs:
                rir = io.read(self.rirs[int(rng.integers(0, len(self.rirs)))])
            else:
                bank = self._bank("rir")
                rir = bank[int(rng.integers(0, len(bank)))]
            wave = reverberate(wave, rir)
        kind = self.KINDS[int(rng.integers(0, len(self.KINDS)))]
        lo, hi = getattr(self.cfg, f"{kind}_snr")
        return add_noise(wave, self._source(kind, wave.shape[0], rng), float(rng.uniform(lo, hi)))
