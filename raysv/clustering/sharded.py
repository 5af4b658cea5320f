"""Sharded k-means on Ray: actors hold embedding shards; only O(k*d) reaches the driver.

# [1] each actor reads its own Parquet files of embeddings (never the driver);
# [2] per iteration the driver broadcasts centroids (k x d) and sums the actors'
#     per-centroid sums, counts and objective shares;
# [3] a final pass assigns cluster ids and distances, kept in the actors until
#     purification decides what to write.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from raysv.clustering import kmeans
from raysv.errors import ConfigError, ManifestError

log = logging.getLogger("raysv")


class EmbeddingShard:
    """Ray actor body: one shard of the embeddings table (utt_ids and an (n, d) matrix)."""

    def __init__(self, files: list[str], normalise: bool, threads: int = 0, gpu: bool = False):
        import faiss
        import pyarrow as pa

        if threads > 0:  # shards on one node share its cores
            faiss.omp_set_num_threads(threads)
            # Arrow sizes its decoding pool from OMP_NUM_THREADS, which Ray sets to 1
            # in a fractional-CPU actor: the read below would then decode on one core.
            pa.set_cpu_count(threads)
        self.files, self.normalise = files, normalise
        self.x = None  # read by the first count(): an error there reaches the driver as
        # the raysv error itself, where one in __init__ would only kill the actor
        self.labels = np.zeros(0, dtype=np.int64)
        self.dist = np.zeros(0, dtype=np.float32)
        # On a GPU actor the rows live on the GPU (faiss-gpu index, or torch where faiss is
        # the CPU build); only centroids go there and per-centroid sums come back.
        self.backend = kmeans.gpu_backend() if gpu else None
        if gpu and self.backend is None:
            raise ConfigError(
                "k-means shard was given a GPU but neither faiss nor torch can use it "
                "(faiss.get_num_gpus() == 0 and torch.cuda.is_available() is False)"
            )
        self._on_device = None

    def _load(self) -> None:
        """[1] One read of all this shard's files (pyarrow reads them in parallel)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from raysv.evaluation.scoring import embedding_matrix, l2_normalise

        files = self.files
        problem = _bad_file(files)  # footers only: names the file before any decoding
        if problem:
            raise ManifestError(problem)
        try:
            table = pq.read_table(
                files if len(files) > 1 else files[0], columns=["utt_id", "embedding"]
            )
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"{', '.join(files)}: could not read embeddings ({exc})") from None
        self.ids, self.x = embedding_matrix(table, ",".join(files), ids_as_list=False)
        if self.normalise:
            self.x = l2_normalise(self.x)
        self.train = self.x  # rows the Lloyd iterations use (a subsample, like faiss, or all)

    def _device(self):
        """The :class:`~raysv.clustering.kmeans.DeviceAssigner` over the training rows (GPU shards)."""
        if self._on_device is None:
            self._on_device = kmeans.DeviceAssigner(self.train, "cuda", self.backend)
        return self._on_device

    def subsample(self, n: int, seed: int) -> int:
        """Train on ``n`` random rows of this shard (all rows if ``n`` >= its size)."""
        if n >= self.x.shape[0]:
            self.train = self.x
        else:
            rng = np.random.default_rng(seed)
            self.train = self.x[np.sort(rng.choice(self.x.shape[0], size=n, replace=False))]
        self._on_device = None
        return int(self.train.shape[0])

    def count(self) -> int:
        """Rows of this shard (the first call reads its files)."""
        if self.x is None:
            self._load()
        return int(self.x.shape[0])

    def dim(self) -> int:
        return int(self.x.shape[1])

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        take = rng.choice(self.train.shape[0], size=min(n, self.train.shape[0]), replace=False)
        return self.train[np.sort(take)]

    def stats(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, tuple]:
        """[2] ``(sums (k, d), counts (k,), objective share, (assign s, sums s, CPU s))``.

        One faiss search per iteration; the objective share comes from its distances.
        """
        t0, cpu0 = time.perf_counter(), time.process_time()
        if self.backend:
            sums, counts, obj = self._device().stats(centroids)
            t1 = time.perf_counter()
            return sums, counts, obj, (t1 - t0, 0.0, time.process_time() - cpu0)
        lab, dist = kmeans.assign(self.train, centroids)
        t1 = time.perf_counter()
        sums, counts = kmeans.partial_stats(self.train, lab, centroids.shape[0])
        obj = float(dist.astype(np.float64).sum())
        return sums, counts, obj, (t1 - t0, time.perf_counter() - t1, time.process_time() - cpu0)

    def objective(self, centroids: np.ndarray) -> float:
        """Sum of squared L2 distances of all this shard's rows to their nearest centroid."""
        return float(self._assign_all(centroids)[1].astype(np.float64).sum())

    def _assign_all(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of every row of the shard (not only the training sample)."""
        if self.backend:
            return kmeans.DeviceAssigner(self.x, "cuda", self.backend).final(centroids)
        return kmeans.assign(self.x, centroids)

    def final_assign(self, centroids: np.ndarray) -> tuple[np.ndarray, float]:
        """[3] Assign every row and keep labels and distances here.

        Returns ``(members per centroid (k,) int64, sum of squared distances)``;
        purification then runs on the kept distances (:meth:`key_histogram` ...).
        """
        self.labels, self.dist = self._assign_all(centroids)
        self._on_device = None  # frees the GPU copy of the training rows
        self.keys = kmeans.distance_keys(self.dist)
        counts = np.bincount(self.labels, minlength=centroids.shape[0]).astype(np.int64)
        return counts, float(self.dist.astype(np.float64).sum())

    def key_histogram(self, high: int | None = None) -> np.ndarray:
        """``(65536,) int64``: see :func:`raysv.clustering.kmeans.key_histogram`."""
        return kmeans.key_histogram(self.keys, high)

    def ties(self, cut: int) -> int:
        """Rows whose distance key equals ``cut``."""
        return int(np.count_nonzero(self.keys == cut))

    def drop_far(self, cut: int | None, quota: int, k: int) -> np.ndarray:
        """Mark rows above the cut (and ``quota`` rows at it) dropped; ``cut`` None
        drops nothing. Returns the kept members per centroid ``(k,) int64``."""
        if cut is None:
            self.kept = np.ones(self.labels.shape[0], dtype=bool)
        else:
            self.kept = ~kmeans.drop_mask(self.keys, cut, quota)
        return np.bincount(self.labels[self.kept], minlength=k).astype(np.int64)

    def labels_table(
        self, sizes: np.ndarray, remap: np.ndarray, min_size: int, round_: int, path: str
    ) -> tuple[int, int, int]:
        """Drop rows of clusters with fewer than ``min_size`` kept members (``sizes``
        from all shards), renumber with ``remap`` and write the pseudo-label table.

        Returns ``(rows, kept rows, largest kept cluster id or -1)``.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        from raysv.data.schema import PSEUDO_LABELS

        kept = self.kept & (sizes[self.labels] >= min_size)
        new_ids = remap[self.labels]
        table = pa.table(
            {
                "utt_id": self.ids,
                "cluster": new_ids,
                "distance": self.dist,
                "kept": kept,
                "round": np.full(len(self.ids), round_, np.int32),
            },
            schema=PSEUDO_LABELS,
        )
        pq.write_table(table, path)
        top = int(new_ids[kept].max()) if kept.any() else -1
        return table.num_rows, int(kept.sum()), top


def _bad_file(files: list[str]) -> str | None:
    """What is wrong with the first of ``files`` that is not Parquet with ``utt_id``
    and ``embedding`` columns (None if all are); reads only their footers."""
    import pyarrow.parquet as pq

    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as e:  # noqa: BLE001 - any failure to read the footer
            return f"{f}: not a readable Parquet file of embeddings ({e})"
        missing = [c for c in ("utt_id", "embedding") if c not in names]
        if missing:
            return f"{f}: no column {', '.join(missing)} (has {', '.join(names)})"
    return None


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


@dataclass(frozen=True)
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

    iterations: int = 20
    seed: int = 1
    spherical: bool = False
    early_stop: float = 0.0
    max_points_per_centroid: int = 256
    init: Literal["random", "kmeans++"] = "random"
    init_points_per_centroid: int = 8

    def __post_init__(self):
        if self.iterations < 1:
            raise ConfigError(f"k-means iterations must be >= 1, got {self.iterations}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}; got {self.init!r}")
        if self.max_points_per_centroid < 1:
            raise ConfigError(
                f"max_points_per_centroid must be >= 1, got {self.max_points_per_centroid}"
            )
        if self.init_points_per_centroid < 1:
            raise ConfigError(
                f"init_points_per_centroid must be >= 1, got {self.init_points_per_centroid}"
            )
        if self.seed < 0:
            raise ConfigError(f"k-means seed must be >= 0, got {self.seed}")
        if not (self.early_stop == -1 or 0.0 <= self.early_stop < 1.0):  # NaN fails too
            raise ConfigError(
                f"early_stop must be a fraction in [0, 1), or -1 (never), got {self.early_stop}"
            )


def _gather_sample(
    actors: list, sizes: list[int], m: int, rng: np.random.Generator, seed: int
) -> np.ndarray:
    """``(m, d)`` training points sampled across shards in proportion to their sizes."""
    import ray

    n = int(sum(sizes))
    per = np.bincount(
        rng.choice(len(actors), size=m, p=np.asarray(sizes) / n), minlength=len(actors)
    )
    parts = ray.get(
        [
            a.sample.remote(int(c), seed + i)
            for i, (a, c) in enumerate(zip(actors, per, strict=True))
            if c > 0
        ]
    )
    return np.concatenate(parts).astype(np.float32)


def init_centroids(
    actors: list,
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
        return _gather_sample(actors, sizes, k, rng, seed)
    if init_points_per_centroid < 1:
        raise ConfigError(f"init_points_per_centroid must be >= 1, got {init_points_per_centroid}")
    m = min(int(sum(sizes)), k * init_points_per_centroid)
    sample = _gather_sample(actors, sizes, m, rng, seed)
    log.info("k-means++ init from a sample of %d points", m)
    return kmeans.kmeans_plus_plus(sample, k, rng)


def sharded_kmeans(
    actors: list, k: int, spec: KMeansSpec, initial: np.ndarray | None = None
) -> KMeansResult:
    """Lloyd iterations over actor-held shards; seeded init from a sample (see :func:`init_centroids`).

    Per iteration the driver receives k x d sums and k counts per actor. The
    objective is the sum of squared L2 distances to the nearest centroid
    (faiss's definition) over the training points, from that iteration's
    assignment. As faiss does, at most ``max_points_per_centroid * k`` points
    (a seeded sample) are iterated on. The actors can be reused for another
    call (another k): each call picks its own training sample.

    ``spec.early_stop`` (faiss's ``early_stop_threshold``, same default): stop
    before ``spec.iterations`` once the objective falls by at most this
    fraction of its previous value (0: once it stops falling; negative: never).
    Not right after empty clusters were re-seeded, whose objective may rise.

    ``initial (k, d)``: start from these centroids instead of ``spec.init``'s
    (faiss's ``Clustering.centroids`` given before ``train``; the parity tests use it).
    """
    import ray

    iterations, seed, early_stop = spec.iterations, spec.seed, spec.early_stop
    t0 = time.monotonic()
    sizes = ray.get([a.count.remote() for a in actors])  # waits for the shards to be read
    load_seconds = time.monotonic() - t0
    n = int(sum(sizes))
    warning = kmeans.check_k(k, n)
    if warning:
        log.warning("k-means: %s", warning)
    # Like faiss: iterate on at most max_points_per_centroid * k points, sampled
    # across shards in proportion to their sizes; the final assignment uses all.
    budget = k * spec.max_points_per_centroid
    if budget < n:
        log.info(
            "k-means on a sample of %d of %d embeddings (%d per centroid)",
            budget,
            n,
            spec.max_points_per_centroid,
        )
        targets = [int(round(budget * m / n)) for m in sizes]
    else:
        targets = list(sizes)  # all rows (resets a sample left by an earlier call)
    sizes = ray.get(
        [
            a.subsample.remote(t, seed + 1000 + i)
            for i, (a, t) in enumerate(zip(actors, targets, strict=True))
        ]
    )
    n = int(sum(sizes))
    rng = np.random.default_rng(seed)
    if initial is not None:
        cent = np.array(initial, dtype=np.float32)
        if cent.shape != (k, ray.get(actors[0].dim.remote())):
            raise ConfigError(f"initial centroids of shape {cent.shape}; need ({k}, d)")
    else:
        cent = init_centroids(actors, sizes, k, seed, rng, spec.init, spec.init_points_per_centroid)
    if spec.spherical:
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    history = []
    cref = None
    obj = prev_obj = float("inf")
    reseeded = True  # no previous objective to compare with
    for it in range(iterations):
        t_it = time.monotonic()
        cref = ray.put(cent)
        results = ray.get([a.stats.remote(cref) for a in actors])
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
    del cref
    return KMeansResult(
        centroids=cent,
        objective=obj,
        iterations=len(history),
        seconds=time.monotonic() - t0,
        history=history,
        load_seconds=load_seconds,
    )


def purify_shards(
    actors: list,
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
    import os

    import ray

    k = members.shape[0]
    n_drop = int(round(drop_fraction * int(members.sum())))
    cut, quotas = None, [0] * len(actors)
    if n_drop:
        hist = np.sum(ray.get([a.key_histogram.remote() for a in actors]), axis=0)
        high, above = kmeans.bucket_of_rank(hist, n_drop)
        low_hist = np.sum(ray.get([a.key_histogram.remote(high) for a in actors]), axis=0)
        low, above_low = kmeans.bucket_of_rank(low_hist, n_drop - above)
        cut = (high << 16) | low
        ties = ray.get([a.ties.remote(cut) for a in actors])
        quotas = kmeans.tie_quotas(ties, n_drop - above - above_low)
    sizes = np.sum(
        ray.get([a.drop_far.remote(cut, q, k) for a, q in zip(actors, quotas, strict=True)]),
        axis=0,
    )
    remap = kmeans.remap_clusters(sizes, members > 0, min_size)
    written = ray.get(
        [
            a.labels_table.remote(
                sizes, remap, min_size, round_, os.path.join(out, f"part-{i:05d}.parquet")
            )
            for i, a in enumerate(actors)
        ]
    )
    return {
        "rows": int(sum(w[0] for w in written)),
        "kept": int(sum(w[1] for w in written)),
        "clusters_after_purification": max(w[2] for w in written) + 1,
    }


def elbow_table(actors: list, ks: list[int], spec: KMeansSpec) -> list[dict]:
    """Objective over a range of k, on the same actors (the shards are read once).

    Each k gets its own seeded k-means; its ``objective`` is then measured over
    *all* embeddings (the training sample differs with k, so the training
    objective would not compare). Returns one dict per k, ascending:
    ``k, objective, objective_per_point, train_objective, iterations, seconds``.
    """
    import ray

    if not ks:
        raise ConfigError("the elbow needs at least one value of k")
    n = int(sum(ray.get([a.count.remote() for a in actors])))
    for k in ks:  # every k before any work: a bad one last would waste the others
        kmeans.check_k(k, n)
    rows = []
    for k in sorted(set(ks)):
        res = sharded_kmeans(actors, k, spec)
        cref = ray.put(res.centroids)
        obj = float(sum(ray.get([a.objective.remote(cref) for a in actors])))
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


DEVICES = ("auto", "cpu", "gpu")


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for a requested ``device`` (``auto``: GPU where the Ray cluster has one)."""
    import ray

    from raysv.runtime import ensure_ray

    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    ensure_ray()
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if device == "gpu" and gpus == 0:
        raise ConfigError("k-means device 'gpu' asked for, but the Ray cluster has no GPUs")
    return "gpu" if device == "gpu" or (device == "auto" and gpus > 0) else "cpu"


def default_shards(use_gpu: bool) -> int:
    """One shard per GPU when the shards search on GPUs, else two per node with CPUs.

    Each CPU shard's faiss search uses its half of the node's cores (faiss
    threads). On 2 cores, 1 shard x 2 threads and 2 x 1 searched at the same
    speed (3.3 vs 3.1-3.6 s per iteration, 1M x 192, k = 1000), and two actors
    read their Parquet files in parallel (3.6 vs 5.0 s); per node rather than a
    fixed count, so a bigger cluster gets more shards.
    """
    import ray

    if use_gpu:
        return max(1, int(ray.cluster_resources().get("GPU", 0)))
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    return max(1, 2 * len(nodes))


def start_shards(
    files: list[str],
    shards: int | None,
    normalise: bool,
    cpus: float = 0.5,
    device: str = "auto",
) -> list:
    """Start ``shards`` actors (default :func:`default_shards`), each reading its share of ``files``.

    ``device``: ``"gpu"`` gives each actor a share of the cluster's GPUs (its rows
    then live on the GPU), ``"cpu"`` none, ``"auto"`` GPUs where the cluster has them.
    Actors are spread over the nodes; each uses ``CPUs of the cluster / shards``
    faiss threads.
    """
    import ray

    from raysv.runtime import ensure_ray

    ensure_ray()
    use_gpu = resolve_device(device) == "gpu"
    if shards is None:
        shards = default_shards(use_gpu)
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    groups = split_files(files, shards)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    opts: dict = {"num_cpus": cpus, "scheduling_strategy": "SPREAD"}
    if use_gpu:  # shards share the GPUs (fractions of one when shards > GPUs)
        opts["num_gpus"] = min(1.0, gpus / len(groups))
        log.info("k-means shards on GPU (%.2f GPU each)", opts["num_gpus"])
    actor_cls = ray.remote(**opts)(EmbeddingShard)
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // len(groups))
    log.info("k-means: %d shard(s), %d faiss thread(s) each", len(groups), threads)
    return [actor_cls.remote(group, normalise, threads, use_gpu) for group in groups]


def final_assign(actors: list, centroids: np.ndarray) -> list:
    """Each shard's ``(sizes (k,), objective)`` of assigning all its rows to ``centroids``
    (the rows keep their labels and distances for purification)."""
    import ray

    cref = ray.put(centroids)
    return ray.get([a.final_assign.remote(cref) for a in actors])


def stop_shards(actors: list) -> None:
    """Kill the shard actors (their rows are freed with them)."""
    import ray

    for a in actors:
        ray.kill(a)
