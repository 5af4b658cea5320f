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


def gpu_backend() -> str | None:
    """Which GPU search this process can use: ``"faiss"`` (a faiss build with GPUs),
    ``"torch"`` (torch sees CUDA but faiss is the CPU build), or ``None``."""
    import faiss

    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        return "faiss"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return "torch" if torch.cuda.is_available() else None


class DeviceAssigner:
    """Nearest-centroid search and per-centroid sums with the rows resident on one device.

    ``x (n, d) float32`` is copied to ``device`` once; each :meth:`stats` call
    then moves only the centroids ``(k, d)`` there and ``(k, d)`` sums back.
    ``backend="faiss"`` searches with a faiss GPU index (faiss-gpu builds);
    ``"torch"`` with a blocked ``|x|^2 - 2 x c^T + |c|^2`` matmul in float32
    (what faiss's flat index computes), on any torch device, CPU included, so
    the same code is tested without a GPU.
    """

    def __init__(
        self, x: np.ndarray, device: str = "cuda", backend: str = "torch", block: int = 65536
    ):
        import torch

        self.backend, self.block, self.n = backend, block, int(x.shape[0])
        self.device = torch.device(device)
        self.x_host = np.ascontiguousarray(x, dtype=np.float32)
        self.x = torch.from_numpy(self.x_host).to(self.device)
        self.sq = (self.x * self.x).sum(1)  # (n,)
        if backend == "faiss":
            import faiss

            self.res = faiss.StandardGpuResources()

    def assign(self, centroids: np.ndarray):
        """``(labels (n,) int64 tensor, squared distances (n,) float32 tensor)`` on the device."""
        import torch

        if self.backend == "faiss":
            import faiss

            index = faiss.GpuIndexFlatL2(self.res, centroids.shape[1])
            index.add(np.ascontiguousarray(centroids, dtype=np.float32))
            dist, lab = index.search(self.x_host, 1)
            return (
                torch.from_numpy(lab[:, 0].astype(np.int64)).to(self.device),
                torch.from_numpy(dist[:, 0]).to(self.device),
            )
        c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(self.device)
        csq = (c * c).sum(1)
        labels = torch.empty(self.n, dtype=torch.int64, device=self.device)
        dist = torch.empty(self.n, dtype=torch.float32, device=self.device)
        for i in range(0, self.n, self.block):
            xb = self.x[i : i + self.block]
            d2 = torch.addmm(csq.unsqueeze(0), xb, c.T, beta=1.0, alpha=-2.0)  # (b, k)
            best, lab = d2.min(1)
            labels[i : i + self.block] = lab
            dist[i : i + self.block] = (best + self.sq[i : i + self.block]).clamp_min_(0)
        return labels, dist

    def stats(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """``(sums (k, d) float64, counts (k,) int64, objective share)`` as :func:`partial_stats`."""
        import torch

        k, d = centroids.shape
        labels, dist = self.assign(centroids)
        sums = torch.zeros((k, d), dtype=torch.float64, device=self.device)
        for i in range(0, self.n, self.block):  # float32 within a block, float64 across
            part = torch.zeros((k, d), dtype=torch.float32, device=self.device)
            part.index_add_(0, labels[i : i + self.block], self.x[i : i + self.block])
            sums += part.double()
        counts = torch.bincount(labels, minlength=k)
        obj = float(dist.double().sum())
        return sums.cpu().numpy(), counts.cpu().numpy().astype(np.int64), obj

    def final(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(labels (n,) int64, squared distances (n,) float32)`` as numpy arrays."""
        labels, dist = self.assign(centroids)
        return labels.cpu().numpy(), dist.cpu().numpy()


def partial_stats(
    x: np.ndarray, labels: np.ndarray, k: int, block: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Per-centroid ``sums (k, d) float64`` and ``counts (k,) int64`` of one shard.

    ``x (n, d) float32``, ``labels (n,) int``. Rows are summed in blocks of
    ``block``: float32 sums within a block (a sparse one-hot product, no float64
    copy of ``x``), float64 across blocks. faiss sums centroids in float32
    throughout; this is as exact as that and ~4x faster than a float64 copy.
    """
    from scipy.sparse import csr_matrix

    n = x.shape[0]
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    for i in range(0, n, block):
        lab = labels[i : i + block]
        m = lab.shape[0]
        onehot = csr_matrix((np.ones(m, np.float32), (lab, np.arange(m))), shape=(k, m))
        sums += onehot @ x[i : i + block]
    return sums, np.bincount(labels, minlength=k).astype(np.int64)


# faiss's relative split perturbation (Clustering.cpp: "a bit above machine epsilon
# for float16"); raysv used an additive 1e-4 of the mean |coordinate| before #19.
SPLIT_EPS = 1.0 / 1024


def update(
    sums: np.ndarray,
    counts: np.ndarray,
    previous: np.ndarray,
    spherical: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """New centroids from summed statistics; empty clusters are re-seeded by splitting.

    An empty cluster takes a copy of a large cluster's centroid (chosen with
    probability proportional to its size minus one) and the two are pushed apart
    as faiss does: each coordinate scaled by ``1 + SPLIT_EPS`` on one and
    ``1 - SPLIT_EPS`` on the other, the signs alternating over dimensions.
    Returns ``(centroids (k, d) float32, number re-seeded)``.
    """
    k = counts.shape[0]
    cent = previous.astype(np.float64).copy()
    full = counts > 0
    cent[full] = sums[full] / counts[full, None]
    counts = counts.astype(np.float64).copy()
    empty = np.flatnonzero(~full)
    sign = np.where(np.arange(cent.shape[1]) % 2 == 0, 1.0, -1.0) * SPLIT_EPS  # (d,)
    for e in empty:
        p = np.maximum(counts - 1, 0)
        if p.sum() == 0:
            break
        big = int(rng.choice(k, p=p / p.sum()))
        cent[e] = cent[big] * (1.0 + sign)
        cent[big] = cent[big] * (1.0 - sign)
        counts[e] = counts[big] / 2
        counts[big] -= counts[e]
    if spherical:
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    return cent.astype(np.float32), int(empty.shape[0])


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007) on a sample ``x (m, d)``.

    The first centre is a uniform draw; each next one is drawn with probability
    proportional to the squared distance to the nearest centre chosen so far
    (D^2 sampling). Cost O(k * m * d) time, O(m * d) memory: run it on a sample,
    never on all N. Returns ``centroids (k, d) float32``; deterministic for a
    given ``rng`` state.
    """
    m = x.shape[0]
    if not 1 <= k <= m:
        raise ConfigError(f"k-means++ needs 1 <= k <= sample size {m}, got k = {k}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(m)

    def dist_to(i: int) -> np.ndarray:  # squared L2 of every row to row i, (m,) float64
        return np.maximum(sq - 2.0 * (x @ x[i]).astype(np.float64) + sq[i], 0.0)

    d2 = dist_to(int(chosen[0]))
    for j in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k: take the rest uniformly
            rest = np.setdiff1d(np.arange(m), chosen[:j])
            chosen[j:] = rng.choice(rest, size=k - j, replace=False)
            break
        c = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right"))
        chosen[j] = min(c, m - 1)
        d2 = np.minimum(d2, dist_to(int(chosen[j])))
    return x[chosen].copy()


def suggest_k(ks: list[int], objectives: list[float]) -> int | None:
    """The elbow of an objective-vs-k curve: the point farthest below the chord.

    Rule: put ``log(k)`` and the objective each on [0, 1] (log because k is
    usually tried on a geometric grid such as 20, 40, 80, 160); draw the chord
    from the first to the last point; return the k whose point lies farthest
    below that chord. ``None`` when fewer than 3 values of k were tried or the
    curve never bends below the chord (no elbow).
    """
    if len(ks) != len(objectives):
        raise ConfigError(f"{len(ks)} values of k but {len(objectives)} objectives")
    if len(ks) < 3:
        return None
    order = np.argsort(ks)
    k = np.asarray(ks, dtype=np.float64)[order]
    y = np.asarray(objectives, dtype=np.float64)[order]
    lx = np.log(k)
    xs = (lx - lx[0]) / max(lx[-1] - lx[0], 1e-12)
    ys = (y - y.min()) / max(y.max() - y.min(), 1e-300)
    chord = ys[0] + (ys[-1] - ys[0]) * xs  # the chord's height at each x
    below = chord - ys  # vertical distance below the chord (proportional to the perpendicular one)
    best = int(np.argmax(below))
    return int(k[best]) if below[best] > 1e-9 else None


# faiss warns below this many training points per centroid; so do we.
STABLE_POINTS_PER_CENTROID = 39


def check_k(k: int, n: int, min_per_cluster: int = 2) -> str | None:
    """Clear errors for k outside [1, n / min_per_cluster] (instead of faiss's ``nx >= k``).

    Below two embeddings per cluster on average most clusters would be single
    points, useless as pseudo labels. Returns a warning text (else ``None``)
    when k leaves fewer than :data:`STABLE_POINTS_PER_CENTROID` per cluster.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if k > n:
        raise ConfigError(f"k = {k} clusters is more than the {n} embeddings; choose k <= {n}")
    if n < k * min_per_cluster:
        raise ConfigError(
            f"k = {k} leaves fewer than {min_per_cluster} embeddings per cluster on average "
            f"({n} embeddings): most clusters would be single points; "
            f"choose k <= {n // min_per_cluster}"
        )
    if n < k * STABLE_POINTS_PER_CENTROID:
        return (
            f"k = {k} gives {n / k:.1f} embeddings per cluster on average, fewer than the "
            f"{STABLE_POINTS_PER_CENTROID} faiss asks for a stable fit: expect small, noisy "
            + (
                f"clusters (k <= {n // STABLE_POINTS_PER_CENTROID} avoids this)"
                if n >= STABLE_POINTS_PER_CENTROID
                else "clusters (too few embeddings for any k to avoid this)"
            )
        )
    return None


def check_purification(drop_fraction: float, min_size: int) -> None:
    """Refuse purification settings outside p in [0, 1) and S >= 1 (before any work)."""
    if not 0.0 <= drop_fraction < 1.0:
        raise ConfigError(f"drop fraction p must be in [0, 1), got {drop_fraction}")
    if min_size < 1:
        raise ConfigError(f"min cluster size S must be >= 1, got {min_size}")


# Purification's drop of the p farthest points, computed where the distances
# live: each shard maps its float32 distances to order-preserving unsigned
# keys, the driver adds up per-shard histograms of the keys' high 16 bits, then
# of the low 16 bits inside the one high bucket that holds the cut, so the
# exact n_drop-th largest distance is found with two O(65536) round trips and
# the driver never holds O(N). Ties at the cut are dropped in global row order
# (shard by shard), which is what a stable sort of all distances would do.
KEY_BUCKETS = 1 << 16


def distance_keys(dist: np.ndarray) -> np.ndarray:
    """``(n,) uint32`` keys with the order of the float32 distances ``(n,)`` (negatives too)."""
    d = np.asarray(dist, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0: they tie
    b = d.view(np.uint32)
    neg = (b >> 31).astype(bool)
    # positive floats: set the sign bit (above every negative); negative: flip all bits
    return np.where(neg, ~b, b | np.uint32(0x80000000)).astype(np.uint32)


def key_histogram(keys: np.ndarray, high: int | None = None) -> np.ndarray:
    """``(65536,) int64`` counts of the keys' high 16 bits, or (with ``high``) of the
    low 16 bits of the keys whose high bits equal ``high``."""
    if high is None:
        return np.bincount(keys >> 16, minlength=KEY_BUCKETS).astype(np.int64)
    low = keys[(keys >> 16) == high] & np.uint32(0xFFFF)
    return np.bincount(low, minlength=KEY_BUCKETS).astype(np.int64)


def bucket_of_rank(hist: np.ndarray, rank: int) -> tuple[int, int]:
    """``(bucket, count above it)``: the bucket holding the ``rank``-th largest
    (1-based) of the counted values, and how many values lie in higher buckets."""
    above = np.cumsum(hist[::-1])[::-1] - hist  # values in strictly higher buckets
    b = int(np.flatnonzero((above < rank) & (above + hist >= rank))[0])
    return b, int(above[b])


def tie_quotas(ties: list[int], need: int) -> list[int]:
    """How many of each shard's rows tied at the cut to drop, first shards first."""
    out = []
    for t in ties:
        q = min(int(t), need)
        out.append(q)
        need -= q
    return out


def drop_mask(keys: np.ndarray, cut: int, quota: int) -> np.ndarray:
    """``(n,) bool``: rows above the cut key, plus the first ``quota`` rows at it."""
    drop = keys > cut
    if quota:
        drop[np.flatnonzero(keys == cut)[:quota]] = True
    return drop


def remap_clusters(sizes: np.ndarray, present: np.ndarray, min_size: int) -> np.ndarray:
    """``(k,) int64`` new cluster ids from ``sizes`` (kept members per cluster) and
    ``present`` (any member at all): clusters with at least ``min_size`` kept
    members become 0..K'-1, the other present ones K'.., absent ones -1."""
    survivors = np.flatnonzero(sizes >= min_size)
    dropped = np.flatnonzero(present & (sizes < min_size))
    remap = np.full(sizes.shape[0], -1, dtype=np.int64)
    remap[survivors] = np.arange(survivors.shape[0])
    remap[dropped] = survivors.shape[0] + np.arange(dropped.shape[0])
    return remap


def purify(
    clusters: np.ndarray, distances: np.ndarray, drop_fraction: float, min_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The iterative paper's purification, in one process (the sharded k-means
    does the same steps in its shards; see :func:`distance_keys`).

    1. drop the ``drop_fraction`` of samples farthest from their centroid (ties
       at the cut: earlier rows first);
    2. then drop clusters with fewer than ``min_size`` remaining members;
    3. renumber clusters contiguously: surviving clusters 0..K'-1, then the
       dropped (too small) clusters K'.., so every row keeps an id for analysis
       and training uses rows with ``kept`` (whose ids are all < K').

    ``clusters (n,) int``, ``distances (n,) float``. Returns ``(kept (n,) bool,
    cluster ids (n,) int64)``.
    """
    check_purification(drop_fraction, min_size)
    n = clusters.shape[0]
    kept = np.ones(n, dtype=bool)
    n_drop = int(round(drop_fraction * n))
    if n_drop:
        kept[np.argsort(-np.asarray(distances, np.float32), kind="stable")[:n_drop]] = False
    sizes = np.bincount(clusters[kept], minlength=int(clusters.max()) + 1 if n else 0)
    kept &= sizes[clusters] >= min_size
    present = np.bincount(clusters, minlength=sizes.shape[0]) > 0
    return kept, remap_clusters(sizes, present, min_size)[clusters]
