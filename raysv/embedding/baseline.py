"""A training-free baseline embedding: mean and std of log-mel filterbanks.

It calibrates the corpus (how hard are the trials without learning?) and is
the reference every trained encoder must beat.
"""

from __future__ import annotations

import numpy as np

from raysv.audio import features, io
from raysv.data.schema import embeddings_table


def stats_embedding(wave: np.ndarray, n_mels: int = 40) -> np.ndarray:
    """``(T,)`` wave -> ``(2 * n_mels,)`` float32: per-bin mean and std of log-mel."""
    fb = features.fbank(wave, n_mels=n_mels, mean_norm=False)
    return np.concatenate([fb.mean(axis=0), fb.std(axis=0)]).astype(np.float32)


class BaselineEmbedder:
    """Ray Data callable: batch with ``utt_id``, ``path``, ``start_s``, ``end_s`` -> embeddings.

    Reads whole utterances (or at most ``max_seconds`` from their centre).
    Output: an embeddings table (``utt_id``, fixed-size float32 ``embedding`` of 2 * n_mels).
    """

    def __init__(self, n_mels: int = 40, max_seconds: float = 10.0):
        self.n_mels = n_mels
        self.max_seconds = max_seconds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        embs = []
        for path, st, en in zip(batch["path"], batch["start_s"], batch["end_s"], strict=True):
            st, en = io.bound(st), io.bound(en)
            wave = io.read_crop(str(path), self.max_seconds, None, start_s=st, end_s=en)
            embs.append(stats_embedding(wave, self.n_mels))
        return embeddings_table(batch["utt_id"], np.stack(embs))
