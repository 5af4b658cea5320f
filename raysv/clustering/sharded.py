"""Sharded k-means: Lloyd iterations, purification and the elbow over :class:`Shards`.

# [1] each shard reads its own Parquet files of embeddings (never the driver);
# [2] per iteration the driver sends the centroids (k x d) and sums the shards'
#     per-centroid sums, counts and objective shares;
# [3] a final pass assigns cluster ids and distances, kept in the shards until
#     purification decides what to write.

The shards are a :class:`~raysv.clustering.shards.Shards`: Ray actors
(:mod:`raysv.clustering.ray_shards`, what the commands use) or in-process
(:class:`~raysv.clustering.shards.LocalShards`, what unit tests use). No Ray here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from raysv.clustering import kmeans
from raysv.clustering.shards import Shards
from raysv.config import RangeError, config, setting
from raysv.errors import ConfigError

log = logging.getLogger("raysv")


@dataclass
class KMeansResult:
    """Outcome of :func:`sharded_kmeans`. ``history``: one dict per iteration."""

    centroids: np.ndarray
    objective: float
    iterations: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    load_seconds: float = (
        0.0  # part of ``seconds`` spent waiting for the actors to read their shards
    )


def split_files(files: list[str], shards: int) -> list[list[str]]:
    """Round-robin the Parquet files over at most ``shards`` actors."""
    shards = max(1, min(shards, len(files)))
    return [files[i::shards] for i in range(shards)]


INITS = ("random", "kmeans++")


@config
class KMeansSpec:
    """How Lloyd's iterations run: faiss's ``ClusteringParameters`` in raysv's words.

    Args:
        iterations: at most this many.
        seed: seeds the training sample and the initial centroids.
        spherical: cosine k-means (unit-length embeddings and centroids).
        early_stop: stop before ``iterations`` once the objective falls by at
            most this fraction of its previous value (faiss's
            ``early_stop_threshold`` and default; 0: once it stops falling;
            negative: never).
        max_points_per_centroid: iterate on at most this many points per
            centroid, a seeded sample (faiss's default 256); the final
            assignment uses every point.
        init: ``"random"`` (k sampled points, faiss's) or ``"kmeans++"`` (D^2
            seeding on a sample of ``init_points_per_centroid * k`` points).
        init_points_per_centroid: the k-means++ sample per centroid.
    """

    iterations: int = setting(
        20,
        ge=1,
        why="raysv's choice, the cluster benchmark's (faiss's niter is 25); early_stop may "
        "end a run sooner",
    )
    seed: int = setting(1, ge=0, why="any fixed seed: the same seed, the same clusters")
    spherical: bool = setting(
        False,
        why="faiss's default for `raysv cluster`; iterate's cluster.spherical is true "
        "(speaker embeddings are scored by cosine)",
    )
    early_stop: float = setting(
        0.0,
        ge=-1,
        hint="a fraction in [0, 1), or -1: never",
        lt=1,
        why="faiss's early_stop_threshold default: stop once the objective stops falling "
        "(-1: never)",
    )
    max_points_per_centroid: int = setting(
        256,
        ge=1,
        why="faiss's default: the iterations run on a sample of 256 k points, the final "
        "assignment on all",
    )
    init: Literal["random", "kmeans++"] = setting(
        "random", why="faiss's init (k sampled points); the elbow uses kmeans++"
    )
    init_points_per_centroid: int = setting(
        8, ge=1, why="a D^2 sample of 8 k points: seeding costs O(8 k^2 d), the driver holds 8 k d"
    )

    def __post_init__(self):
        if self.init not in INITS:  # Literal is checked when read from YAML, not from Python
            raise ConfigError(f"init must be one of {', '.join(INITS)}; got {self.init!r}")
        if -1 < self.early_stop < 0:  # the gap in its declared range
            raise RangeError(
                f"early_stop must be a fraction in [0, 1), or -1 (never), got {self.early_stop}"
            )


def _gather_sample(
    shards: Shards, sizes: list[int], m: int, rng: np.random.Generator, seed: int
) -> np.ndarray:
    """``(m, d)`` training points sampled across shards in proportion to their sizes
    ``sizes`` (training rows per shard; ``m`` <= their sum).

    How many come from each shard is a multinomial draw (each point picks its shard);
    where that asks a shard for more rows than it has, which happens when one shard
    is small beside ``m``, the counts are drawn again without replacement (a
    multivariate hypergeometric), so that always ``m`` distinct rows come back."""
    n = int(sum(sizes))
    if m > n:
        raise ConfigError(f"k-means: {m} starting points asked of {n} training rows")
    per = np.bincount(
        rng.choice(len(shards), size=m, p=np.asarray(sizes) / n), minlength=len(shards)
    )
    if np.any(per > np.asarray(sizes)):
        per = rng.multivariate_hypergeometric(np.asarray(sizes, dtype=np.int64), m)
    return shards.sample([int(c) for c in per], seed)


def init_centroids(
    shards: Shards,
    sizes: list[int],
    k: int,
    seed: int,
    rng: np.random.Generator,
    init: str = "random",
    init_points_per_centroid: int = 8,
) -> np.ndarray:
    """Seeded initial centroids ``(k, d) float32`` from a sample gathered from the shards.

    ``random``: k training points sampled across shards (faiss's init).
    ``kmeans++``: D^2 seeding on a sample of ``init_points_per_centroid * k``
    training points (all of them if fewer); the driver holds only that sample.
    """
    if init not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}; got {init!r}")
    if init == "random":
        return _gather_sample(shards, sizes, k, rng, seed)
    if init_points_per_centroid < 1:
        raise ConfigError(f"init_points_per_centroid must be >= 1, got {init_points_per_centroid}")
    m = min(int(sum(sizes)), k * init_points_per_centroid)
    sample = _gather_sample(shards, sizes, m, rng, seed)
    log.info("k-means++ init from a sample of %d points", m)
    return kmeans.kmeans_plus_plus(sample, k, rng)


def draw_start(
    shards: Shards, k: int, spec: KMeansSpec, initial: np.ndarray | None = None
) -> tuple[list[int], np.ndarray, np.random.Generator]:
    """The seeded draws of a k-means run: its training sample and initial centroids.

    Like faiss, iterate on about ``spec.max_points_per_centroid * k`` points
    (``budget``): each shard keeps ``round(budget * rows / n)`` of its rows, drawn
    without replacement (so each row is in the sample with probability about
    ``budget / n``; faiss: the first ``budget`` rows of a random permutation); this
    sets the shards' training rows. Then ``spec.init``'s centroids from that
    sample (``random``: k distinct rows of it, each with probability k / its size;
    faiss: the first k rows of another permutation — the same chance per row,
    though raysv's split of k over the shards is a multinomial draw, so the set of
    k rows is not exactly a uniform k-subset), unless ``initial (k, d)`` is given.
    The two sides differ in how the random numbers are made, not in each row's
    chance (tests/clustering/test_kmeans_parity.py).

    Returns ``(training rows per shard, centroids (k, d) float32, the generator
    that goes on to choose clusters to split)``.
    """
    sizes = shards.counts()
    n = int(sum(sizes))
    budget = k * spec.max_points_per_centroid
    if budget < n:
        log.info(
            "k-means on a sample of %d of %d embeddings (%d per centroid)",
            budget,
            n,
            spec.max_points_per_centroid,
        )
        targets = [int(round(budget * m / n)) for m in sizes]
        # rounding per shard can leave fewer than k rows (a budget of about k): add the
        # missing ones where the rounding cut most (only then: the usual draws stay)
        short = k - sum(targets)
        if short > 0:
            cut = [
                budget * m / n - t if t < m else -1.0 for m, t in zip(sizes, targets, strict=True)
            ]
            for i in np.argsort(cut)[::-1][:short]:
                targets[i] += 1
    else:
        targets = list(sizes)  # all rows (resets a sample left by an earlier call)
    sizes = shards.subsample(targets, spec.seed + 1000)
    rng = np.random.default_rng(spec.seed)
    if initial is None:
        init = spec.init, spec.init_points_per_centroid
        return sizes, init_centroids(shards, sizes, k, spec.seed, rng, *init), rng
    cent = np.array(initial, dtype=np.float32)
    if cent.shape != (k, shards.dim()):
        raise ConfigError(
            f"initial centroids of shape {cent.shape}; need (k, d) = ({k}, {shards.dim()})"
        )
    return sizes, cent, rng


def sharded_kmeans(
    shards: Shards, k: int, spec: KMeansSpec, initial: np.ndarray | None = None
) -> KMeansResult:
    """Lloyd iterations over the shards from a seeded sample and start (:func:`draw_start`).

    Per iteration the driver receives k x d sums and k counts per actor. The
    objective is the sum of squared L2 distances to the nearest centroid
    (faiss's definition) over the training points, from that iteration's
    assignment. As faiss does, at most ``max_points_per_centroid * k`` points
    (a seeded sample) are iterated on. The shards can be reused for another
    call (another k): each call picks its own training sample.

    ``spec.early_stop`` (faiss's ``early_stop_threshold``, same default): stop
    before ``spec.iterations`` once the objective falls by at most this
    fraction of its previous value (0: once it stops falling; negative: never).
    Not right after empty clusters were re-seeded, whose objective may rise.

    ``initial (k, d)``: start from these centroids instead of ``spec.init``'s
    (faiss's ``Clustering.centroids`` given before ``train``; the parity tests use it).
    """
    iterations, early_stop = spec.iterations, spec.early_stop
    t0 = time.monotonic()
    sizes = shards.counts()  # waits for the shards to be read
    load_seconds = time.monotonic() - t0
    n = int(sum(sizes))
    warning = kmeans.check_k(k, n)
    if warning:
        log.warning("k-means: %s", warning)
    sizes, cent, rng = draw_start(shards, k, spec, initial)
    n = int(sum(sizes))
    if spec.spherical:
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    history = []
    obj = prev_obj = float("inf")
    reseeded = True  # no previous objective to compare with
    for it in range(iterations):
        t_it = time.monotonic()
        results = shards.stats(cent)
        sums = np.sum([r[0] for r in results], axis=0)
        counts = np.sum([r[1] for r in results], axis=0)
        obj = float(sum(r[2] for r in results))
        cent, n_empty = kmeans.update(sums, counts, cent, spec.spherical, rng)
        nz = counts[counts > 0]
        history.append(
            {
                "iteration": it,
                "objective": obj,
                "empty_reseeded": n_empty,
                "imbalance": float((counts.astype(np.float64) ** 2).sum() * k / n**2),
                "largest": int(counts.max()),
                "smallest_nonempty": int(nz.min()) if nz.size else 0,
                # wall time of the iteration on the driver, and the slowest shard's
                # faiss search and sums: the rest is Ray round trips and the update
                "seconds": time.monotonic() - t_it,
                "assign_seconds": max(r[3][0] for r in results),
                "sums_seconds": max(r[3][1] for r in results),
                "shard_cpu_seconds": sum(r[3][2] for r in results),  # all shards together
            }
        )
        log.info(
            "k-means iteration %d/%d: objective %.6g, %d empty re-seeded, imbalance %.3f",
            it + 1,
            iterations,
            obj,
            n_empty,
            history[-1]["imbalance"],
        )
        if not reseeded and prev_obj - obj <= early_stop * abs(prev_obj):
            log.info(
                "k-means converged after %d iterations: the objective fell by %.3g "
                "(early_stop %g of %.6g)",
                it + 1,
                prev_obj - obj,
                early_stop,
                prev_obj,
            )
            break
        prev_obj, reseeded = obj, n_empty > 0
    return KMeansResult(
        centroids=cent,
        objective=obj,
        iterations=len(history),
        seconds=time.monotonic() - t0,
        history=history,
        load_seconds=load_seconds,
    )


def purify_shards(
    shards: Shards,
    members: np.ndarray,
    drop_fraction: float,
    min_size: int,
    round_: int,
    out: str,
) -> dict:
    """Purify the final assignment where it lives and write the pseudo-label table.

    The shards hold labels and distances (after ``final_assign``); the driver
    finds the exact cut for the ``drop_fraction`` farthest rows from two
    65536-bucket histograms of order-preserving distance keys, hands out the
    ties at the cut in shard order, and renumbers clusters from per-cluster
    counts: it holds O(k), never O(N). Same result as
    :func:`raysv.clustering.kmeans.purify` over all rows in shard order.
    ``members (k,)``: rows per cluster, summed over the shards' ``final_assign``.
    Returns ``{"rows", "kept", "clusters_after_purification"}``.
    """
    from raysv.data import fs

    k = members.shape[0]
    n_drop = int(round(drop_fraction * int(members.sum())))
    cut, quotas = None, [0] * len(shards)
    if n_drop:
        high, above = kmeans.bucket_of_rank(shards.key_histogram(), n_drop)
        low, above_low = kmeans.bucket_of_rank(shards.key_histogram(high), n_drop - above)
        cut = (high << 16) | low
        quotas = kmeans.tie_quotas(shards.ties(cut), n_drop - above - above_low)
    sizes = shards.drop_far(cut, quotas, k)
    remap = kmeans.remap_clusters(sizes, members > 0, min_size)
    paths = [fs.join(out, f"part-{i:05d}.parquet") for i in range(len(shards))]
    written = shards.labels_table(sizes, remap, min_size, round_, paths)
    return {
        "rows": int(sum(w[0] for w in written)),
        "kept": int(sum(w[1] for w in written)),
        "clusters_after_purification": max(w[2] for w in written) + 1,
    }


def elbow_table(shards: Shards, ks: list[int], spec: KMeansSpec) -> list[dict]:
    """Objective over a range of k, on the same shards (read once).

    Each k gets its own seeded k-means; its ``objective`` is then measured over
    *all* embeddings (the training sample differs with k, so the training
    objective would not compare). Returns one dict per k, ascending:
    ``k, objective, objective_per_point, train_objective, iterations, seconds``.
    """
    if not ks:
        raise ConfigError("the elbow needs at least one value of k")
    n = int(sum(shards.counts()))
    for k in ks:  # every k before any work: a bad one last would waste the others
        kmeans.check_k(k, n)
    rows = []
    for k in sorted(set(ks)):
        res = sharded_kmeans(shards, k, spec)
        obj = shards.objective(res.centroids)
        rows.append(
            {
                "k": k,
                "objective": obj,
                "objective_per_point": obj / n,
                "train_objective": res.objective,
                "iterations": res.iterations,
                "seconds": round(res.seconds, 3),
            }
        )
        log.info("elbow: k=%d objective %.6g (%.4g per point)", k, obj, obj / n)
    return rows
