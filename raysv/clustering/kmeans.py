"""k-means building blocks as pure functions over arrays (no Ray here).

Shapes: embeddings ``x (n, d) float32``; centroids ``c (k, d) float32``.
faiss does the nearest-centroid search; per-centroid sums and counts are what
shards send to the driver, so the driver only ever holds O(k*d).
"""

from __future__ import annotations

import numpy as np

from raysv.errors import ConfigError


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2) for each row: ``(labels (n,) int64, squared distances (n,) float32)``."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, lab = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return lab[:, 0].astype(np.int64), dist[:, 0]


def partial_stats(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-centroid ``sums (k, d) float64`` and ``counts (k,) int64`` of one shard."""
    from scipy.sparse import csr_matrix

    n = x.shape[0]
    onehot = csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))
    return np.asarray(onehot @ x.astype(np.float64)), np.bincount(labels, minlength=k).astype(
        np.int64
    )


def update(
    sums: np.ndarray,
    counts: np.ndarray,
    previous: np.ndarray,
    spherical: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """New centroids from summed statistics; empty clusters are re-seeded by splitting.

    An empty cluster takes a copy of a large cluster's centroid (chosen with
    probability proportional to its size) with a small symmetric perturbation,
    as faiss does. Returns ``(centroids (k, d) float32, number re-seeded)``.
    """
    k = counts.shape[0]
    cent = previous.astype(np.float64).copy()
    full = counts > 0
    cent[full] = sums[full] / counts[full, None]
    counts = counts.astype(np.float64).copy()
    empty = np.flatnonzero(~full)
    for e in empty:
        p = np.maximum(counts - 1, 0)
        if p.sum() == 0:
            break
        big = int(rng.choice(k, p=p / p.sum()))
        eps = 1e-4 * (np.abs(cent[big]).mean() + 1e-12)
        sign = rng.choice([-1.0, 1.0], size=cent.shape[1])
        cent[e] = cent[big] + sign * eps
        cent[big] = cent[big] - sign * eps
        counts[e] = counts[big] / 2
        counts[big] -= counts[e]
    if spherical:
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    return cent.astype(np.float32), int(empty.shape[0])


def check_k(k: int, n: int, min_per_cluster: int = 1) -> None:
    """Clear errors for k outside [1, n / min_per_cluster] (instead of faiss's ``nx >= k``)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if k > n:
        raise ConfigError(f"k = {k} clusters is more than the {n} embeddings; choose k <= {n}")
    if n < k * min_per_cluster:
        raise ConfigError(
            f"k = {k} leaves fewer than {min_per_cluster} embeddings per cluster on average ({n} embeddings); "
            f"choose k <= {n // min_per_cluster} or lower --min-per-cluster"
        )


def purify(
    clusters: np.ndarray, distances: np.ndarray, drop_fraction: float, min_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The iterative paper's purification.

    1. drop the ``drop_fraction`` of samples farthest from their centroid;
    2. then drop clusters with fewer than ``min_size`` remaining members;
    3. renumber clusters contiguously: surviving clusters 0..K'-1, then the
       dropped (too small) clusters K'.., so every row keeps an id for analysis
       and training uses rows with ``kept`` (whose ids are all < K').

    Returns ``(kept (n,) bool, cluster ids (n,) int64)``.
    """
    if not 0.0 <= drop_fraction < 1.0:
        raise ConfigError(f"drop fraction p must be in [0, 1), got {drop_fraction}")
    n = clusters.shape[0]
    kept = np.ones(n, dtype=bool)
    n_drop = int(round(drop_fraction * n))
    if n_drop:
        kept[np.argsort(-distances, kind="stable")[:n_drop]] = False
    sizes = np.bincount(clusters[kept], minlength=int(clusters.max()) + 1 if n else 0)
    kept &= sizes[clusters] >= min_size
    present = np.bincount(clusters, minlength=sizes.shape[0]) > 0
    survivors = np.flatnonzero(sizes >= min_size)
    dropped = np.flatnonzero(present & (sizes < min_size))
    remap = np.full(sizes.shape[0], -1, dtype=np.int64)
    remap[survivors] = np.arange(survivors.shape[0])
    remap[dropped] = survivors.shape[0] + np.arange(dropped.shape[0])
    return kept, remap[clusters]
