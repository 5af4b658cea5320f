"""Ray Data callable that embeds utterances with a trained encoder checkpoint.

The checkpoint (``best_model.pt`` from ``raysv pretrain`` or ``raysv train``,
see :mod:`raysv.models.checkpoint`) is loaded once per actor.
Utterances are embedded whole up to ``max_seconds``, cut (centre) to a
multiple of ``bucket_seconds`` so that equal lengths batch together and memory
stays bounded by ``max_seconds`` whatever the corpus. The same cut is used
when training scores its dev trials (:func:`utterance_fbank`), so the dev EER
that selects an epoch is the dev EER this embedder gives (the pipeline's).
"""

from __future__ import annotations

import numpy as np

from raysv.audio import features, io
from raysv.data.schema import embeddings_table

# 0.1 s: at most 0.1 s of an utterance is cut (a 0.5 s bucket cut ~9 % of the demo's
# 3-s utterances and moved dev EER 18.8 -> 20.2 % for the same encoder).
BUCKET_SECONDS = 0.1


def bucket_length(n: int, bucket: int, cap: int) -> int:
    """Samples kept of an utterance of ``n`` samples: a multiple of ``bucket``, at most ``cap``."""
    return max(bucket, min(cap, (n // bucket) * bucket))


def utterance_fbank(
    path: str,
    start_s: float | None,
    end_s: float | None,
    n_mels: int,
    max_seconds: float,
    bucket_seconds: float = BUCKET_SECONDS,
) -> np.ndarray:
    """Log-mel ``(frames, n_mels)`` of one utterance as evaluation embeds it: at most
    ``max_seconds`` from its centre, cut (centre) to a multiple of ``bucket_seconds``."""
    cap = int(max_seconds * io.TARGET_SR)
    bucket = int(bucket_seconds * io.TARGET_SR)
    wave = io.read_crop(path, cap / io.TARGET_SR, None, start_s, end_s)
    wave = features.crop(wave, bucket_length(wave.shape[0], bucket, cap))
    return features.fbank(wave, n_mels=n_mels)


class TorchEmbedder:
    """``batch (utt_id, path, start_s, end_s) -> {utt_id, embedding (B, D) float32}``."""

    def __init__(
        self,
        checkpoint: str,
        max_seconds: float = 10.0,
        bucket_seconds: float = BUCKET_SECONDS,
        device: str | None = None,
        skipped_to: str | None = None,
    ):
        import torch

        from raysv.models.checkpoint import load_encoder

        self.model, spec = load_encoder(checkpoint)
        self.n_mels = spec["n_mels"]
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.max_seconds, self.bucket_seconds = max_seconds, bucket_seconds
        self.skipped_to = skipped_to  # folder for the record of unreadable rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from raysv.embedding.rows import read_batch, record_skipped

        keep, feats, skipped = read_batch(batch, self._features)
        record_skipped(self.skipped_to, skipped)
        if not feats:  # every row unreadable: an empty table of the right width
            frames = torch.zeros(1, 100, self.n_mels, device=self.device)
            with torch.no_grad():
                dim = self.model(frames).shape[-1]
            return embeddings_table(batch["utt_id"][keep], np.zeros((0, dim), np.float32))
        order = sorted(range(len(feats)), key=lambda i: feats[i].shape[0])
        embs: dict[int, np.ndarray] = {}
        with torch.no_grad():
            i = 0
            while i < len(order):
                j = i
                while j < len(order) and feats[order[j]].shape[0] == feats[order[i]].shape[0]:
                    j += 1
                x = torch.from_numpy(np.stack([feats[t] for t in order[i:j]])).to(self.device)
                for t, e in zip(order[i:j], self.model(x).float().cpu().numpy(), strict=True):
                    embs[t] = e
                i = j
        out = np.stack([embs[t] for t in range(len(feats))]).astype(np.float32)
        return embeddings_table(batch["utt_id"][keep], out)

    def _features(self, path: str, start_s: float | None, end_s: float | None) -> np.ndarray:
        """Log-mel ``(frames, n_mels)`` of one utterance, cut to its length bucket."""
        return utterance_fbank(
            path, start_s, end_s, self.n_mels, self.max_seconds, self.bucket_seconds
        )
