"""Evaluating a torch encoder on trials in-process (dev set each epoch, final reports).

Utterances are embedded as ``raysv embed`` embeds them (centre crop of at most
``max_seconds``, cut to the embedder's length bucket: the dev EER that selects
an epoch is the pipeline's); features are computed once and cached across epochs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raysv.evaluation.evaluate import score_trials
from raysv.evaluation.metrics import verification_report


def trial_features(utts: pa.Table, n_mels: int, max_seconds: float) -> dict[str, np.ndarray]:
    """``utt_id -> fbank (F, n_mels)`` for every row of ``utts`` (utt_id, path, start_s, end_s)."""
    from raysv.embedding.torch_embedder import utterance_fbank

    cols = (utts.column(c).to_pylist() for c in ("utt_id", "path", "start_s", "end_s"))
    return {
        uid: utterance_fbank(path, st, en, n_mels, max_seconds)
        for uid, path, st, en in zip(*cols, strict=True)
    }


def readable_features(utts: pa.Table, n_mels: int, max_seconds: float) -> dict[str, np.ndarray]:
    """:func:`trial_features` of the rows whose audio reads; an unreadable row (an
    :class:`~raysv.errors.AudioError`) is left out with a warning, as training skips
    it (for the scoring centre's training sample: a bad file costs its row only)."""
    import logging

    from raysv.errors import AudioError, ManifestError

    out = {}
    for i in range(utts.num_rows):
        row = utts.slice(i, 1)
        try:
            out.update(trial_features(row, n_mels, max_seconds))
        except AudioError as exc:
            logging.getLogger("raysv").warning(
                "scoring centre: skipped %s (%s)", row.column("path")[0].as_py(), exc
            )
    if not out:
        raise ManifestError("no training utterance of the scoring centre's sample could be read")
    return out


def embed_features(
    model, feats: dict[str, np.ndarray], device: str = "cpu", batch: int = 32
) -> tuple[list[str], np.ndarray]:
    """Embed every feature matrix with ``model`` in eval mode, grouping equal lengths.

    Returns ``(utt_ids, embeddings (n, D) float32)``.
    """
    import torch

    ids = sorted(feats, key=lambda u: feats[u].shape[0])
    out: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        i = 0
        while i < len(ids):
            t = feats[ids[i]].shape[0]
            j = i
            while j < len(ids) and j - i < batch and feats[ids[j]].shape[0] == t:
                j += 1
            x = torch.from_numpy(np.stack([feats[u] for u in ids[i:j]])).to(device)
            y = model(x).float().cpu().numpy()
            out.update(zip(ids[i:j], y, strict=True))
            i = j
    model.train(was_training)
    return ids, np.stack([out[u] for u in ids])


def evaluate_model(
    model,
    trials: pa.Table,
    feats: dict[str, np.ndarray],
    device: str = "cpu",
    centre_feats: dict[str, np.ndarray] | None = None,
) -> dict:
    """EER/minDCF of ``model`` on resolved ``trials`` (entries are utt_ids in ``feats``).

    Scored ``cos(a - c, b - c)`` with ``c`` the mean embedding of ``centre_feats``
    (training utterances: the centre of every raysv score, issue #24, so a dev
    threshold holds for any pair); without them, ``c`` is the mean of the scored
    utterances (for callers with no training audio at hand).
    """
    ids, emb = embed_features(model, feats, device)
    if centre_feats:
        _, train = embed_features(model, centre_feats, device)
        centre = train.astype(np.float64).mean(axis=0).astype(np.float32)
        scores = score_trials(trials, ids, emb, centre=centre)
    else:
        scores = score_trials(trials, ids, emb, center=True)
    return verification_report(scores, trials.column("label").to_numpy())
