"""The ``model.json`` card of an exported encoder, and the thresholds it carries.

Scores are cosines after subtracting the model's centre (the mean training
embedding, stored in the card): ``cos(a - c, b - c)``, the same for a single pair
as for a trial list, so a threshold learnt on dev trials applies to any pair.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from raysv.evaluation.metrics import det_curve

FORMAT = "raysv-model/1"
LOCK = os.path.join("requirements", "lock-cpu.txt")


def threshold_at_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold (accept ``score >= t``) at the first DET point where the
    miss rate falls to the false-alarm rate: the EER operating point.

    ``scores`` ``(n,)`` float, ``labels`` ``(n,)`` in {0, 1}.
    """
    p_miss, p_fa, thr = det_curve(scores, labels)
    return float(thr[int(np.argmax(p_miss - p_fa <= 0))])


def threshold_at_min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01):
    """The threshold (accept ``score >= t``) minimising the detection cost at
    ``p_target`` (c_miss = c_fa = 1); ``None`` when rejecting every pair is cheapest."""
    p_miss, p_fa, thr = det_curve(scores, labels)
    i = int(np.argmin(p_target * p_miss + (1 - p_target) * p_fa))
    return None if not np.isfinite(thr[i]) else float(thr[i])


def centred_cosine(a: np.ndarray, b: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Row-wise ``cos(a - c, b - c)``: ``a, b (n, D)``, ``centre (D,)`` -> ``(n,)``."""
    from raysv.evaluation.scoring import l2_normalise

    return np.einsum("nd,nd->n", l2_normalise(a - centre), l2_normalise(b - centre))


def lock_hash(root: str | None = None) -> str | None:
    """``sha256:<hex>`` of the lock file raysv was installed from, if it is beside the package."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(os.path.dirname(root), LOCK)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def recorded_metrics(run_summary: dict | None) -> dict:
    """``{"dev": {"eer", "min_dcf_0.01", "min_dcf_0.05"}, "test": ...}`` of the best encoder
    as the training run recorded them (``summary.json``'s ``final``), scored with the
    convention of that run (centre = mean of the scored trial set's embeddings)."""
    final = (run_summary or {}).get("final") or {}
    out: dict = {}
    for split in ("dev", "test"):
        for metric in ("eer", "min_dcf_0.01", "min_dcf_0.05"):
            for key in (f"best.{split}.{metric}", f"{split}.{metric}", f"{split}_{metric}"):
                if isinstance(final.get(key), (int, float)):
                    out.setdefault(split, {})[metric] = float(final[key])
                    break
    return out


def training_counts(run_summary: dict | None, manifest_summary: dict | None) -> dict:
    """Counts of the training data (no paths) from a run's summaries."""
    out = {}
    for src in (manifest_summary or {}, run_summary or {}):
        for key in (
            "utterances",
            "train_utterances",
            "held_out_utterances",
            "dialogues",
            "trials_dev",
            "trials_test",
        ):
            if isinstance(src.get(key), int):
                out[key] = src[key]
    return out


def build_card(
    *,
    spec: dict,
    n_mels: int,
    dim: int,
    centre: np.ndarray,
    centre_from: dict,
    training: dict,
    recorded: dict,
    dev: dict | None,
    frontend: dict,
) -> dict:
    """The card as a JSON-able dict (see docs/export.md)."""
    import raysv

    return {
        "format": FORMAT,
        "raysv_version": raysv.__version__,
        "encoder": spec,
        "embedding_dim": int(dim),
        "input": {
            "name": "wave",
            "shape": ["batch", "time"],
            "dtype": "float32",
            "sample_rate": 16000,
            "min_samples": 400,
        },
        "output": {"name": "embedding", "shape": ["batch", dim], "normalised": False},
        "frontend": frontend,
        "scoring": {
            "rule": "cosine(a - centre, b - centre); accept when score >= threshold",
            "centre": [float(v) for v in centre],
            "centre_from": centre_from,
        },
        "training_data": training,
        "recorded_metrics": recorded,
        "dev": dev,
        "lock": lock_hash(),
    }


def read_card(folder: str) -> dict:
    """The card of an exported model folder; a clear error for anything else."""
    from raysv.errors import ConfigError

    path = os.path.join(folder, "model.json")
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder}: no such model folder (make one with raysv export)")
    if not os.path.isfile(path):
        raise ConfigError(f"{folder}: not an exported model (no model.json; see raysv export)")
    try:
        with open(path) as f:
            card = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable model card ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        got = card.get("format") if isinstance(card, dict) else None
        raise ConfigError(f"{path}: model card format {got!r}, this raysv reads {FORMAT!r}")
    return card
