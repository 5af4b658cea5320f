"""``raysv verify``: score two recordings, or a trial list straight from audio, with an
exported model (ONNX Runtime, no Ray).

Both read audio with the card's length policy and score ``cos(a - c, b - c)``
with the card's centre ``c``, the rule the card's dev thresholds were set with.
"""

from __future__ import annotations

import os
import time

import numpy as np

from raysv.errors import RaysvError
from raysv.export.runtime import ExportedModel


def decide(score: float, threshold: float) -> str:
    """``accept`` when ``score >= threshold`` (the card's convention), else ``reject``."""
    return "accept" if score >= threshold else "reject"


def verify_pair(
    a: str, b: str, model: str, threshold: float | None = None, point: str = "eer"
) -> dict:
    """Score recordings ``a`` and ``b``; accept/reject at ``threshold`` (default: the
    card's threshold at ``point``)."""
    m = ExportedModel(model)
    thr = float(threshold) if threshold is not None else m.threshold(point)
    emb = m.embed([m.read(a), m.read(b)])
    score = float(m.score(emb[:1], emb[1:])[0])
    return {
        "a": a,
        "b": b,
        "score": score,
        "threshold": thr,
        "operating_point": "given" if threshold is not None else point,
        "decision": decide(score, thr),
        "model": os.path.abspath(model),
    }


def verify_trials(
    trials: str, root: str, model: str, threshold: float | None = None, point: str = "eer"
) -> dict:
    """EER/minDCF of a trial list (VoxCeleb ``1 a.wav b.wav`` or Kaldi ``a b target``
    text, entries relative to ``root``) scored from the audio; with a threshold (given,
    or the card's at ``point`` where it has one), the error rates at it too."""
    from raysv.data.problems import Problems
    from raysv.data.trials import parse_trials
    from raysv.evaluation.metrics import check_trial_labels, verification_report

    t0 = time.monotonic()
    if not os.path.isdir(root):
        raise RaysvError(f"--root {root}: no such folder")
    m = ExportedModel(model)
    problems = Problems(strict=True)  # a bad line is one error naming it
    table = parse_trials(trials, problems)
    enroll, test = table.column("enroll").to_pylist(), table.column("test").to_pylist()
    labels = np.asarray(table.column("label").to_pylist())
    check_trial_labels(labels, trials)
    files = sorted({*enroll, *test})
    waves = [m.read(os.path.join(root, f)) for f in files]  # a missing file: one error naming it
    emb = m.embed(waves)
    index = {f: i for i, f in enumerate(files)}
    scores = m.score(emb[[index[f] for f in enroll]], emb[[index[f] for f in test]])
    report = verification_report(scores, labels)
    report.update({"trials": trials, "files": len(files), "model": os.path.abspath(model)})
    if threshold is None:
        try:
            threshold = m.threshold(point)
        except RaysvError:
            threshold = None
    if threshold is not None:
        acc = scores >= threshold
        report["threshold"] = float(threshold)
        report["miss_rate"] = float((~acc[labels == 1]).mean())
        report["false_accept_rate"] = float(acc[labels == 0].mean())
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report
