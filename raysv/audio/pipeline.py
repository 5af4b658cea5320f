"""The featurisation chain used for training and benchmarks, as one pure function."""

from __future__ import annotations

import numpy as np

from raysv.audio import features, io
from raysv.audio.augment import Augmenter


def load_features(
    path: str,
    seconds: float,
    rng: np.random.Generator | None,
    n_mels: int = 80,
    augmenter: Augmenter | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
) -> np.ndarray:
    """decode (crop region only) -> mono -> 16 kHz -> exact crop -> [augment] -> log-mel + CMN.

    Returns ``(frames, n_mels)`` float32 with ``frames = num_frames(seconds * 16000)``.
    ``rng`` None gives the centre crop and no augmentation (evaluation).
    """
    n = int(round(seconds * io.TARGET_SR))
    wave = features.crop(io.read_crop(path, seconds, rng, start_s, end_s), n, rng)
    if augmenter is not None and rng is not None:
        wave = augmenter(wave, rng)
    return features.fbank(wave, n_mels=n_mels)
