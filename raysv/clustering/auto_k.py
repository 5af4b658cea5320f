"""Choosing k from the embeddings when the speaker count is unknown.

A user with unlabeled audio does not know how many speakers it holds. Two
rules, both on a seeded sample of the round's embeddings and neither reading a
label:

**Merging (the default where dev trials exist)**, :func:`choose_k_by_merging`:
over-cluster, then merge agglomeratively (average linkage on cosine
similarity) while two groups' mean pairwise similarity says "same speaker" by
a threshold calibrated on the dev trials scored with the same encoder: at
least the score that only :data:`FALSE_ACCEPTS` (2 %) of dev non-target
trials reach, halfway up to the mean target score where that is higher
(:func:`merge_threshold`). k is the number of resulting groups holding at
least :data:`MIN_MEMBERS` sampled utterances (smaller groups are outliers the
k-means then assigns to their nearest cluster). A strict threshold on purpose:
merging two speakers corrupts a pseudo label, splitting one costs less
(purification and the loss gate act on it), so the rule leans to more
clusters. Measured on the demo corpus's Stage I embeddings (40 speakers, 3
seeds, 2 rounds each): k = 49-57; the dev EER threshold gave 11-25 and the
silhouette rule 7-34; NMI of k-means at the chosen k 0.76-0.79 against
0.73-0.77 at the true k. Dev trials are evaluation data the rules may use for
selection (as checkpoint selection does); test trials never.

**Silhouette (the fallback without dev trials)**, :func:`choose_k`: k-means
for each k of a geometric grid, and the largest k whose mean cosine
silhouette is within 3 % of the best (:data:`TOLERANCE`). On weak Stage I
embeddings the silhouette curve is flat and this rule under-clusters (see the
automatic-k table in docs/benchmarks.md); give k when you can.

Cost, on the driver: merging, one faiss k-means to at most :data:`NODES`
groups and an average-linkage pass over them (O(NODES^2 d), seconds);
silhouette, ``len(ks)`` k-means runs and silhouettes on at most ``sample``
points. Limits: merging counts a speaker only with at least
:data:`MIN_MEMBERS` utterances in the sample (so at most ``sample / 3``
speakers); the silhouette grid reaches ``sample / 5``. For more, give k.
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
# the former), so ties go to more clusters. A heuristic: see docs/benchmarks.md's table.
TOLERANCE = 0.03
# The merging rule's settings (see the module docstring for what they were measured on).
FALSE_ACCEPTS = 0.02  # the dev non-target trials whose score may reach the merge threshold
MIN_MEMBERS = 3  # sampled utterances a group needs to count as a speaker
NODES = 6000  # groups the sample is first over-clustered into (points themselves below this)


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
        "method": "silhouette",
        "rule": (
            "largest k whose mean cosine silhouette (spherical k-means, geometric grid) "
            f"is within {tolerance:.0%} of the best"
        ),
        "sample": len(xs),
        "elbow_k": suggest_k([r["k"] for r in rows], [r["objective"] for r in rows]),
        "table": rows,
    }


def merge_threshold(
    scores: np.ndarray, labels: np.ndarray, false_accepts: float = FALSE_ACCEPTS
) -> float:
    """The similarity down to which groups are merged, from dev trials.

    ``scores`` ``(n,)``, ``labels`` ``(n,)`` in {0, 1} (1 = target): dev trials
    scored with the encoder whose embeddings are to be clustered. Start from
    ``q``, the score that only ``false_accepts`` of the non-target trials
    reach; if the mean target score ``m`` lies above it (a strong encoder),
    go halfway up: ``q + max(0, (m - q) / 2)``. Why: two groups of one speaker
    have a mean similarity near ``m``, two speakers one near the similarity of
    their voices, and among many speakers the nearest pairs reach ``q`` (2 %
    of 300 pairs of 25 speakers is 6 merges); halfway keeps them apart where
    the encoder separates them. Weak encoders (``m < q``, as on the demo's
    Stage I) use ``q``.
    """
    if not 0.0 < false_accepts < 1.0:
        raise ConfigError(f"false_accepts must be in (0, 1), got {false_accepts}")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    non, tar = scores[labels == 0], scores[labels == 1]
    if non.size == 0 or tar.size == 0:
        raise ConfigError(
            "the dev trials need target and non-target trials to calibrate a merge threshold"
        )
    q = float(np.quantile(non, 1.0 - false_accepts))
    return q + max(0.0, (float(tar.mean()) - q) / 2)


def average_linkage(sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Average-linkage agglomeration of groups of unit vectors (nearest-neighbour chain).

    ``sums`` ``(m, d)``: each group's sum of unit vectors; ``sizes`` ``(m,)``:
    its number of vectors. The similarity of two groups is their mean pairwise
    cosine, ``sums[a] @ sums[b] / (sizes[a] * sizes[b])`` (exact for unit
    vectors), so the groups may be k-means micro-clusters as well as points.
    Returns ``(m - 1, 3)`` rows ``(a, b, similarity)``: group ``b`` merged into
    ``a`` (indices into the input, ``a`` standing for the union afterwards).
    Average linkage is reducible, so the chain's merges are those of the greedy
    algorithm (in another order): cutting at a similarity keeps exactly the
    merges at or above it.
    """
    S = np.array(sums, dtype=np.float32)
    n = np.asarray(sizes, dtype=np.float32).copy()
    m = len(S)
    alive = np.ones(m, dtype=bool)
    merges = np.zeros((max(m - 1, 0), 3))
    chain: list[int] = []
    done = 0
    while done < m - 1:
        if not chain:
            chain.append(int(np.flatnonzero(alive)[0]))
        i = chain[-1]
        sim = (S @ S[i]) / (n * n[i])
        sim[~alive] = -np.inf
        sim[i] = -np.inf
        j = int(np.argmax(sim))
        if len(chain) >= 2 and sim[chain[-2]] >= sim[j]:
            j = chain[-2]  # ties go back along the chain, so it always ends
        if len(chain) >= 2 and j == chain[-2]:
            chain.pop()
            chain.pop()
            merges[done] = (i, j, sim[j])
            done += 1
            S[i] += S[j]
            n[i] += n[j]
            alive[j] = False
        else:
            chain.append(j)
    return merges


def groups_at(merges: np.ndarray, sizes: np.ndarray, threshold: float) -> np.ndarray:
    """Group sizes ``(g,)`` (in vectors) after the merges of similarity >= ``threshold``."""
    parent = np.arange(len(sizes))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b, s in merges:
        if s >= threshold:
            parent[root(int(b))] = root(int(a))
    roots = np.array([root(a) for a in range(len(sizes))])
    return np.bincount(roots, weights=sizes, minlength=len(sizes))[np.unique(roots)]


def choose_k_by_merging(
    x: np.ndarray,
    threshold: float,
    seed: int = 1,
    sample: int = 20000,
    nodes: int = NODES,
    min_members: int = MIN_MEMBERS,
) -> dict:
    """Choose k for embeddings ``x`` ``(N, d)`` by average-linkage merging down to ``threshold``.

    ``threshold``: a cosine similarity (from :func:`merge_threshold` on dev
    trials). Returns ``{"k", "rule", "method", "threshold", "sample",
    "nodes", "min_members", "table"}``; ``table`` has one row per threshold
    of a grid around ``threshold`` (``index, threshold, k, groups``: groups of at
    least ``min_members`` and all groups), the evidence for how k moves with it.
    """
    import faiss

    if x.ndim != 2 or len(x) == 0:
        raise ConfigError(f"choose_k needs a (N, d) array of embeddings, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError("choose_k: the embeddings hold NaN or inf values")
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"the merge threshold is a cosine similarity in [-1, 1], got {threshold}")
    rng = np.random.default_rng(seed)
    if len(x) > sample:
        x = x[np.sort(rng.choice(len(x), sample, replace=False))]
    xs = _normalise(np.ascontiguousarray(x, dtype=np.float32))
    if len(xs) < 2 * min_members:
        raise ConfigError(
            f"{len(xs)} embeddings are too few to choose k from the data (need at least "
            f"{2 * min_members}); give k"
        )
    if len(xs) > nodes:  # over-cluster into micro-clusters first
        km = faiss.Kmeans(
            xs.shape[1], nodes, niter=20, seed=seed, spherical=True, min_points_per_centroid=1
        )
        km.train(xs)
        assign = km.index.search(xs, 1)[1][:, 0]
        sizes = np.bincount(assign, minlength=nodes).astype(np.float64)
        sums = np.zeros((nodes, xs.shape[1]), dtype=np.float64)
        np.add.at(sums, assign, xs)
        keep = sizes > 0
        sums, sizes = sums[keep], sizes[keep]
    else:
        sums, sizes = xs.astype(np.float64), np.ones(len(xs))
    merges = average_linkage(sums, sizes)

    def row(t: float) -> dict:
        g = groups_at(merges, sizes, t)
        return {
            "threshold": round(float(t), 4),
            "k": int((g >= min_members).sum()),
            "groups": len(g),
        }

    chosen = row(threshold)
    grid = [threshold + d for d in np.linspace(-0.2, 0.2, 17) if -1.0 <= threshold + d <= 1.0]
    table = [{"index": i, **r} for i, r in enumerate(row(t) for t in sorted(grid))]
    k = chosen["k"]
    if k < 2:
        raise ConfigError(
            f"merging at cosine {threshold:.3f} left {k} group(s) of at least {min_members} "
            f"utterances in {len(xs)}: too few to cluster; give k"
        )
    log.info(
        "auto k: merging at cosine %.3f leaves %d groups of >= %d utterances (%d in all)",
        threshold,
        k,
        min_members,
        chosen["groups"],
    )
    return {
        "k": k,
        "method": "merge",
        "rule": (
            f"groups of at least {min_members} sampled utterances left by average-linkage "
            f"merging (cosine) while the groups' mean similarity is at least {threshold:.3f}"
        ),
        "threshold": float(threshold),
        "sample": len(xs),
        "nodes": len(sizes),
        "min_members": min_members,
        "table": table,
    }


def plot(result: dict, path: str) -> str:
    """The evidence for k as a PNG at ``path``: k against the merge threshold (merging
    rule) or the silhouette against k (silhouette rule), the choice marked."""
    from raysv.clustering.plots import _pyplot

    plt = _pyplot()
    if result.get("method") == "merge":
        fig, ax = plt.subplots(figsize=(5, 3.2))
        t = [r["threshold"] for r in result["table"]]
        ax.plot(
            t,
            [r["k"] for r in result["table"]],
            "o-",
            label=f"groups of >= {result['min_members']}",
        )
        ax.axvline(
            result["threshold"], color="C3", ls="--", label=f"threshold -> k = {result['k']}"
        )
        ax.set_yscale("log")
        ax.set_xlabel("merge threshold (mean cosine similarity)")
        ax.set_ylabel("k")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
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
