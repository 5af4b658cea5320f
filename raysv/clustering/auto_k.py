"""Choosing k from the embeddings when the speaker count is unknown.

A user with unlabeled audio does not know how many speakers it holds. The rule
here: cluster a sample of the round's embeddings with k-means for each k of a
geometric grid, and take the largest k whose clustering's mean silhouette
(cosine) is within 3 % of the best (:data:`TOLERANCE`). The silhouette compares each point's mean distance to its
own cluster with that to the nearest other cluster, so it falls both when true
speakers are merged (k too small) and when one speaker is split (k too large);
the k-means objective alone only falls with k. The elbow of the objective
(:func:`raysv.clustering.kmeans.suggest_k`, the LGL paper's rule) is reported
next to it as evidence, not used.

Labels are never read: only embeddings. Cost: ``len(ks)`` faiss k-means runs
and silhouettes on at most ``sample`` points (seconds for the default 8000),
on the driver. Limit: the largest k the grid reaches is ``sample / 5``; for a
corpus with more speakers than that, give k.
"""

from __future__ import annotations

import logging

import numpy as np

from raysv.clustering.kmeans import suggest_k
from raysv.errors import ConfigError

log = logging.getLogger("raysv")

MIN_PER_CLUSTER = 5  # the grid never asks for fewer points per cluster than this
# Silhouettes within this share of the best count as tied, and the largest tied k
# wins. Measured on the demo corpus's Stage I embeddings (40 speakers, 480
# utterances, test EER ~20 %): the curve is flat, 0.361 at k = 2 (the voices'
# coarsest split) and 0.360 at k = 34, so "the best" picked k = 2; the largest
# k within 3 % picks 34. Splitting a speaker over two clusters costs pseudo
# labels less than merging speakers (purification and the loss gate act on
# the former), so ties go to more clusters. A heuristic: see the README's table.
TOLERANCE = 0.03


def k_grid(n: int, points: int = 16) -> list[int]:
    """Candidate k for ``n`` embeddings: geometric from 2 to ``n // 5`` (``points`` values,
    fewer where they round to the same integer).

    Raises ConfigError below 15 embeddings (the grid would be 2 alone).
    """
    hi = n // MIN_PER_CLUSTER
    lo = 2
    if hi < lo + 1:
        raise ConfigError(
            f"{n} embeddings are too few to choose k from the data (need at least "
            f"{(lo + 1) * MIN_PER_CLUSTER}); give k"
        )
    grid = np.unique(np.round(np.geomspace(lo, hi, points)).astype(int))
    return [int(k) for k in grid]


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def choose_k(
    x: np.ndarray,
    ks: list[int] | None = None,
    seed: int = 1,
    sample: int = 8000,
    tolerance: float | None = None,
) -> dict:
    """Choose k for embeddings ``x`` (shape ``(N, d)``) by the mean cosine silhouette.

    The chosen k is the largest whose silhouette is within ``tolerance``
    (relative; default :data:`TOLERANCE`) of the best one. Returns ``{"k",
    "rule", "sample", "elbow_k", "table"}``; ``table`` has one row per k:
    ``k, objective`` (k-means objective on the unit-normalised sample),
    ``silhouette``.
    """
    tolerance = TOLERANCE if tolerance is None else tolerance
    import faiss
    from sklearn.metrics import silhouette_score

    if x.ndim != 2 or len(x) == 0:
        raise ConfigError(f"choose_k needs a (N, d) array of embeddings, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError("choose_k: the embeddings hold NaN or inf values")
    rng = np.random.default_rng(seed)
    if len(x) > sample:
        x = x[np.sort(rng.choice(len(x), sample, replace=False))]
    xs = _normalise(np.ascontiguousarray(x, dtype=np.float32))
    ks = ks or k_grid(len(xs))
    rows = []
    for k in ks:
        if not 2 <= k <= len(xs) // 2:
            raise ConfigError(f"k = {k} does not fit {len(xs)} embeddings (2 <= k <= N/2)")
        km = faiss.Kmeans(
            xs.shape[1], k, niter=25, seed=seed, spherical=True, min_points_per_centroid=1
        )
        km.train(xs)
        dist, labels = km.index.search(xs, 1)
        labels = labels[:, 0]
        sil = (
            float(silhouette_score(xs, labels, metric="cosine"))
            if len(np.unique(labels)) > 1
            else -1.0
        )
        rows.append({"k": int(k), "objective": float(dist.sum()), "silhouette": sil})
        log.info("auto k: k=%d silhouette %.4f", k, sil)
    top = max(r["silhouette"] for r in rows)
    tied = [r for r in rows if r["silhouette"] >= top - tolerance * abs(top)]
    best = max(tied, key=lambda r: r["k"])
    return {
        "k": best["k"],
        "rule": (
            "largest k whose mean cosine silhouette (spherical k-means, geometric grid) "
            f"is within {tolerance:.0%} of the best"
        ),
        "sample": len(xs),
        "elbow_k": suggest_k([r["k"] for r in rows], [r["objective"] for r in rows]),
        "table": rows,
    }


def plot(result: dict, path: str) -> str:
    """Silhouette (and objective) against k with the chosen k marked, as a PNG at ``path``."""
    from raysv.clustering.plots import _pyplot

    plt = _pyplot()
    ks = [r["k"] for r in result["table"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(ks, [r["silhouette"] for r in result["table"]], "o-", label="silhouette")
    ax.axvline(result["k"], color="C3", ls="--", label=f"chosen k = {result['k']}")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("mean cosine silhouette")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
