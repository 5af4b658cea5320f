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

    def __init__(self, n_mels: int = 40, max_seconds: float = 10.0, skipped_to: str | None = None):
        self.n_mels = n_mels
        self.max_seconds = max_seconds
        self.skipped_to = skipped_to  # folder for the record of unreadable rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from raysv.embedding.rows import read_batch, record_skipped

        keep, embs, skipped = read_batch(
            batch,
            lambda p, st, en: stats_embedding(
                io.read_crop(p, self.max_seconds, None, start_s=st, end_s=en), self.n_mels
            ),
        )
        record_skipped(self.skipped_to, skipped)
        out = np.stack(embs) if embs else np.zeros((0, 2 * self.n_mels), np.float32)
        return embeddings_table(batch["utt_id"][keep], out)
