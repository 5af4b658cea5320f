"""Sharded k-means vs. faiss.Kmeans on the same data and machine, and driver memory vs N.

Data: a mixture of Gaussians (1M x 192, k = 1000; --quick: 50k x 32, k = 50),
written as 16 Parquet shards. faiss.Kmeans runs in this process (it needs the
whole matrix); raysv's driver runs in a fresh process that never loads it, so
its peak RSS is the driver's own. Both iterate on faiss's default sample of
256 points per centroid, exactly 20 iterations (early stopping off on both
sides: faiss's ``early_stop_threshold`` and raysv's ``early_stop`` are -1), so
both do the same work; pair r uses seed r on both sides. With early stopping
on, the iterations each side needs from its own random start vary by seed
(at 200k x 64, k = 200, seeds 1-8: faiss 17-24, raysv 17-24), which made
end-to-end ratios measure seed luck. The objective is then taken over all
points for both. Besides wall times (which on a shared machine
depend on the other load), CPU seconds are compared: faiss.Kmeans's whole
process during ``train`` vs the shards' CPU time in their iterations (the
shards' initial read and the driver's small O(k*d) work are not in it).
The two sides run alternately ``REPEATS`` times (once with --quick), in ABBA
order; ratios are taken per back-to-back pair, medians reported. faiss's side also times
reading the same Parquet files into one matrix (``time_ratio_from_files``).

Scaling (``scaling``, ``scaling_time_ratio_raysv_over_faiss``): the same
comparison at each N of ``sizes`` (default 100k, 1M, 10M; --quick: 5k, 50k,
200k), so that Ray's fixed costs at small N and the scaling at large N both
show. Below the main N the data are its first N rows (16 new files); at the
main N the main comparison's pairs are reused; above it (a multiple of it)
the main N's 16 files repeated N / main N times under new names (hard links
where the file system allows, else copies), so no side holds more distinct
points than the main N. Each other N is one back-to-back pair with seed 1,
alternating which side goes first. faiss.Kmeans gets the whole N x d matrix
in memory (read file by file into one array: 7.7 GB at 10M x 192; skipped,
and said so in the result, when the machine has less memory available);
raysv's shards read the files themselves (at 10M they hold 7.7 GB between
them, about twice that while decoding). The objective over all points of
repeated data is faiss's objective over one copy times the copies (exact:
the rows are the same); raysv computes its own over every row.

Objective over more seeds (``objective_ratio_median_all_seeds``): one random
start is luck (on these blobs the ratio ranges over +-5 % by seed), so beside the
pairs' seeds 1-3, seeds up to ``OBJECTIVE_SEEDS`` (``RAYSV_BENCH_CLUSTER_SEEDS``,
which sets the same-sample comparison's seeds too)
run both sides in this process (raysv over in-memory shards holding the same
files as its actors would, so the same results as ``raysv cluster --seed s``)
for the objective. Seed s of one side shares no random numbers with seed s of
the other, so beside the median of per-seed ratios the two sides' objectives are
compared as two samples (``objective_unpaired``: ratio of medians and of means,
each with a bootstrap interval; :func:`unpaired_ratio`).

The draws alone (``init_coverage``): how many of the k blobs each side's initial
centroids fall in, for ``COVERAGE_SEEDS`` seeds (no iterations, about a second a
seed), compared as two samples.

Same start (``objective_ratio_same_start``): from independent seeded starts
each side lands in its own local minimum, so per seed the objective ratio
measures the start more than the algorithm; raysv is also run from faiss's
initial centroids for each seed (``faiss.Kmeans(niter=0)``); as the two sides'
training samples (256 points per centroid, each drawn its own way) lead to
different minima too, both then iterate ``SAME_START_ITERATIONS`` times on
every point. The first iteration's objectives then agree (to faiss's float32
sum); later ones agree until the first empty cluster is split, where the two
sides' rules pick different clusters to split. Both sides' per-iteration
objectives and split counts are kept in the result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

log = logging.getLogger(__name__)

CHILD = r"""
import json, sys, time
import numpy as np
from raysv.clustering.driver import cluster
from raysv.clustering.sharded import KMeansSpec
from raysv.runtime import ensure_ray
ensure_ray()  # every core, as faiss.Kmeans gets
t0 = time.perf_counter()
initial = np.load(sys.argv[6]) if len(sys.argv) > 6 else None
# from a given start (the same-start comparison): that many iterations on every point
more = dict(iterations=int(sys.argv[7]), max_points_per_centroid=10**9) if initial is not None else dict(iterations=20)
s = cluster(sys.argv[1], sys.argv[2], int(sys.argv[3]), KMeansSpec(early_stop=-1.0, seed=int(sys.argv[5]), **more), device=sys.argv[4], initial=initial)
total = time.perf_counter() - t0
with open("/proc/self/status") as f:
    peak = [int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:")][0]
h = s["history"]
mean = lambda key: sum(r[key] for r in h) / len(h)
print(json.dumps({"history_objective": [r["objective"] for r in h], "history_splits": [r["empty_reseeded"] for r in h], "kmeans_s": s["kmeans_seconds"], "load_s": s["shard_load_seconds"], "total_s": total, "objective_all": s["objective_all_points"], "driver_peak_mb": peak, "iter_s": mean("seconds"), "assign_s": mean("assign_seconds"), "sums_s": mean("sums_seconds"), "cpu_s": sum(r["shard_cpu_seconds"] for r in h), "shards": s["shards"], "iterations": s["iterations"]}))
"""


def _data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """``(n, d)`` rows of k Gaussian blobs (centres ~ N(0, 9), unit noise), each row's
    blob uniform at random (the centres: :func:`_centres`)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32) * 3
    lab = rng.integers(0, k, n)
    return centres[lab] + rng.standard_normal((n, d)).astype(np.float32)


def _write(x: np.ndarray, folder: str, parts: int = 16) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    for p, idx in enumerate(np.array_split(np.arange(x.shape[0]), parts)):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[idx].ravel()), x.shape[1])
        pq.write_table(
            pa.table({"utt_id": [f"u{i}" for i in idx], "embedding": emb}),
            os.path.join(folder, f"p{p:03d}.parquet"),
        )
    _mark_complete(folder)
    return folder


def _mark_complete(folder: str) -> None:
    """An empty completion marker (another tool's, see :mod:`raysv.data.outputs`): raysv
    cluster reads every .parquet file of the folder."""
    with open(os.path.join(folder, "_SUCCESS"), "w"):
        pass


def _repeat(folder: str, out: str, copies: int) -> str:
    """``out``: the .parquet files of ``folder`` ``copies`` times under new names (hard
    links where possible), copy by copy in name order (copy 0's files sort first)."""
    os.makedirs(out, exist_ok=True)
    names = sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))
    for c in range(copies):
        for name in names:
            src, dst = os.path.join(folder, name), os.path.join(out, f"c{c:03d}_{name}")
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    _mark_complete(out)
    return out


REPEATS = 3
OBJECTIVE_SEEDS = 9  # the objective over seeds 1-9: the pairs' 1-3, then in-process
COVERAGE_SEEDS = 200  # the initial centroids' blob coverage: ~1 s a seed at 1M (no iterations)


def objective_seeds() -> int:
    """Seeds 1..s of the objective's comparisons: from independent starts (never fewer
    than the pairs' seeds, which are always among them) and from the same sample and
    start (exactly s): ``RAYSV_BENCH_CLUSTER_SEEDS`` or :data:`OBJECTIVE_SEEDS`; >= 2."""
    import re

    from raysv.errors import ConfigError

    text = os.environ.get("RAYSV_BENCH_CLUSTER_SEEDS", "").strip()
    if not text:
        return OBJECTIVE_SEEDS
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 2:
        raise ConfigError(f"RAYSV_BENCH_CLUSTER_SEEDS must be a whole number >= 2; got {text!r}")
    return int(text)


SAME_START_ITERATIONS = 5  # from the same start on every point: 5 x (1M x 1000 x 192) searches
SIZES = (100_000, 1_000_000, 10_000_000)  # the scaling runs' N (--sizes)
QUICK_SIZES = (5_000, 50_000, 200_000)


def parse_sizes(text: str) -> list[int]:
    """``--sizes``: ``"100k,1M,10M"`` -> ``[100000, 1000000, 10000000]``; ``"none"``: no
    scaling runs."""
    from raysv.errors import ConfigError

    if text.strip().lower() in ("", "none"):
        return []
    sizes = []
    for bit in text.split(","):
        b = bit.strip().lower()
        scale = {"k": 1_000, "m": 1_000_000}.get(b[-1:], 1)
        try:
            value = float(b[:-1] if scale > 1 else b) * scale
        except ValueError:
            value = 0.0
        if value < 1 or value != int(value):
            raise ConfigError(
                f"--sizes: {bit.strip()!r} is not a number of points (e.g. 100k,1M,10M or none)"
            )
        sizes.append(int(value))
    return sizes


def check_sizes(sizes: list[int], n: int, k: int) -> list[int]:
    """The scaling runs' sizes, sorted; refused before any work where they can't be made
    from the main ``n`` points (above ``n``: a multiple of it) or hold fewer than ``k``."""
    from raysv.errors import ConfigError

    for size in sizes:
        if size < k:
            raise ConfigError(f"--sizes: {size} points are fewer than k = {k}")
        if size > n and size % n:
            raise ConfigError(
                f"--sizes: {size} is above the benchmark's {n} points, so it must be a "
                f"multiple of {n} (their files repeated)"
            )
    return sorted(set(sizes))


def _faiss(folder: str, d: int, k: int, seed: int = 1, copies: int = 0) -> dict:
    """faiss.Kmeans in this process, from the same Parquet files: read, train, objective.

    ``copies`` > 0 (the scaling runs): the files are read one at a time into one
    array (no second copy of the data while decoding); where they are ``copies``
    copies of the same rows (:func:`_repeat`), the objective over all points is
    ``copies`` times that over the first copy.
    """
    import faiss

    t0 = time.perf_counter()
    # what faiss.Kmeans needs first: the whole matrix here
    x = _read_matrix(folder) if copies == 0 else _read_into_one_array(folder)
    out = {"read_s": time.perf_counter() - t0}
    t0, cpu0 = time.perf_counter(), time.process_time()
    km = faiss.Kmeans(d, k, niter=20, seed=seed, early_stop_threshold=-1.0)
    km.train(x)
    out["train_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - cpu0
    st = km.iteration_stats[-1]  # cumulative
    out["search_share"] = st["time_search"] / st["time"]
    out["iterations"] = len(km.iteration_stats)
    one = x if copies <= 1 else x[: x.shape[0] // copies]
    out["objective_all"] = objective_all(one, km.centroids) * max(copies, 1)
    log.info(
        "faiss.Kmeans, %d x %d, seed %d: read %.1f s, train %.1f s (%d iterations), objective %.6g",
        x.shape[0],
        d,
        seed,
        out["read_s"],
        out["train_s"],
        out["iterations"],
        out["objective_all"],
    )
    return out


def _read_into_one_array(folder: str) -> np.ndarray:
    """``(n, d) float32`` of the folder's .parquet files in name order, read one file at
    a time into one preallocated array (peak: the matrix plus one file)."""
    import pyarrow.parquet as pq

    from raysv.evaluation.scoring import embedding_matrix

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".parquet"))
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    x = None
    start = 0
    for f, r in zip(files, rows, strict=True):
        part = embedding_matrix(pq.read_table(f, columns=["utt_id", "embedding"]), f, False)[1]
        if x is None:
            x = np.empty((sum(rows), part.shape[1]), dtype=np.float32)
        x[start : start + r] = part
        start += r
    return x


def _mem_available() -> int | None:
    """Bytes of memory available (Linux's MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read_matrix(folder: str) -> np.ndarray:
    """``(n, d) float32`` of every shard under ``folder``, in this process."""
    import pyarrow.parquet as pq

    from raysv.evaluation.scoring import embedding_matrix

    return embedding_matrix(pq.read_table(folder), folder, ids_as_list=False)[1]


def _faiss_same_start(folder: str, d: int, k: int, seed: int, path: str) -> dict:
    """faiss.Kmeans from its own initial centroids for ``seed`` (its pick before
    iteration 1, ``niter=0``), then ``SAME_START_ITERATIONS`` iterations on every
    point (no training sample), objective over all points; the start is saved as
    ``(k, d)`` float32 at ``path`` for raysv's side."""
    import faiss

    x = _read_matrix(folder)
    km = faiss.Kmeans(d, k, niter=0, seed=seed)
    km.train(x)
    np.save(path, km.centroids)
    km = faiss.Kmeans(
        d,
        k,
        niter=SAME_START_ITERATIONS,
        seed=seed,
        early_stop_threshold=-1.0,
        max_points_per_centroid=10**9,
    )
    km.train(x, init_centroids=np.load(path))
    return {
        "objective_all": objective_all(x, km.centroids),
        "start": path,
        "history_objective": [float(st["obj"]) for st in km.iteration_stats],
        "history_splits": [int(st["nsplit"]) for st in km.iteration_stats],
    }


def _centres(d: int, k: int, seed: int = 0) -> np.ndarray:
    """``(k, d)``: the blob centres that :func:`_data` with this seed draws first."""
    return np.random.default_rng(seed).standard_normal((k, d)).astype(np.float32) * 3


def init_coverage(folder: str, d: int, k: int, seeds: list[int], shards: int = 2) -> list[dict]:
    """How many of the k blobs of :func:`_data` (seed 0) under ``folder`` each side's
    initial centroids fall in, per seed: faiss.Kmeans's pick (``niter=0``: its training
    sample and start, as drawn for ``niter=20``) and raysv's (:func:`draw_start` on the
    files split as the command splits them). On these blobs a run's objective depends
    on its start mostly through this count and the splits that follow, and two
    uniform draws of k rows cover the same number of blobs on average
    (k(1 - (1 - 1/k)^k) for equal blobs). Cheap: no iterations.
    Returns ``[{"seed", "faiss", "raysv"}]`` (blobs covered)."""
    import faiss

    from raysv.clustering.driver import embedding_files
    from raysv.clustering.sharded import KMeansSpec, draw_start, split_files
    from raysv.clustering.shards import LocalShards

    blobs = faiss.IndexFlatL2(d)
    blobs.add(_centres(d, k))
    covered = lambda c: len(set(blobs.search(c, 1)[1][:, 0].tolist()))  # noqa: E731
    x = _read_matrix(folder)
    held = LocalShards.from_files(split_files(embedding_files(folder), shards))
    rows = []
    log.info("initial centroids of %d seeds on both sides: blobs covered", len(seeds))
    with _no_iteration_lines():
        for seed in seeds:
            km = faiss.Kmeans(d, k, niter=0, seed=seed)
            km.train(x)
            _, ours, _ = draw_start(held, k, KMeansSpec(seed=seed))
            rows.append({"seed": seed, "faiss": covered(km.centroids), "raysv": covered(ours)})
    return rows


def coverage_summary(rows: list[dict], k: int) -> dict:
    """Mean and spread of :func:`init_coverage`'s counts per side, the difference of the
    means (raysv - faiss) with its standard error, and the uniform draw's expectation."""
    f = np.array([r["faiss"] for r in rows], np.float64)
    o = np.array([r["raysv"] for r in rows], np.float64)
    return {
        "seeds": len(rows),
        "faiss_mean": round(float(f.mean()), 2),
        "faiss_sd": round(float(f.std(ddof=1)), 2),
        "raysv_mean": round(float(o.mean()), 2),
        "raysv_sd": round(float(o.std(ddof=1)), 2),
        "difference": round(float(o.mean() - f.mean()), 2),
        "difference_se": round(
            float(np.hypot(f.std(ddof=1), o.std(ddof=1)) / np.sqrt(len(rows))), 2
        ),
        "uniform_expectation": round(k * (1 - (1 - 1 / k) ** k), 2),
    }


def unpaired_ratio(ours: list[float], theirs: list[float], draws: int = 9999) -> dict:
    """Two samples of objectives from independent seeded starts, compared as samples.

    Seed s of raysv and seed s of faiss share no random numbers, so per-seed ratios
    pair unrelated draws (their median depends on the pairing). Instead: median(ours)
    / median(theirs) and mean / mean, each with a two-sample BCa bootstrap interval
    (scipy.stats.bootstrap, ``draws`` resamples of each side apart, seeded: the same
    figures for the same inputs in any order). Approximate with few seeds: in a
    simulation (3 % normal spread, 200 repetitions) the mean's 95 % interval held
    the true ratio 92 % of the time at 9 seeds per side and 96 % at 30.
    ``ours (n,)``, ``theirs (m,)``: objectives. Returns ``{"median_ratio",
    "median_ratio_95", "mean_ratio", "mean_ratio_95", "seeds"}``."""
    import warnings

    from scipy.stats import bootstrap

    a, b = np.sort(np.asarray(ours, np.float64)), np.sort(np.asarray(theirs, np.float64))
    if a.size < 2 or b.size < 2:
        raise ValueError(f"need two or more objectives per side; got {a.size} and {b.size}")

    def band(stat) -> list[float]:
        with warnings.catch_warnings():  # BCa on ties (a median's resamples) may degenerate
            warnings.simplefilter("ignore")
            for method in ("BCa", "percentile"):
                ci = bootstrap(
                    (a, b),
                    stat,
                    n_resamples=draws,
                    method=method,
                    paired=False,
                    vectorized=True,
                    random_state=0,
                ).confidence_interval
                if np.isfinite(ci.low) and np.isfinite(ci.high):
                    break
        return [round(float(ci.low), 4), round(float(ci.high), 4)]

    median = lambda x, y, axis=-1: np.median(x, axis=axis) / np.median(y, axis=axis)  # noqa: E731
    mean = lambda x, y, axis=-1: np.mean(x, axis=axis) / np.mean(y, axis=axis)  # noqa: E731
    return {
        "median_ratio": round(float(median(a, b)), 4),
        "median_ratio_95": band(median),
        "mean_ratio": round(float(mean(a, b)), 4),
        "mean_ratio_95": band(mean),
        "seeds": [int(a.size), int(b.size)],
    }


def objective_all(x: np.ndarray, centroids: np.ndarray) -> float:
    """faiss's k-means objective of ``centroids (k, d)`` over every row of ``x (n, d)``:
    the sum of squared L2 distances to the nearest centroid (added up in float64)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return float(index.search(x, 1)[0].astype(np.float64).sum())


def same_sample_objectives(
    x: np.ndarray, k: int, seeds: list[int], per_centroid: int = 256, shards: int = 2
) -> list[dict]:
    """Both sides on the same training sample from the same start, as the command
    iterates: per seed, ``per_centroid * k`` rows of ``x (n, d)`` drawn at random, k of
    them as the initial centroids, then 20 iterations on that sample on both sides
    (faiss.Kmeans given the sample whole and the start; raysv's Lloyd iterations over
    ``shards`` in-memory shards of it), objective over all of ``x``. The sample and
    the start are what make independent seeded runs land in different minima; with
    both fixed, what differs is the algorithm: only the empty-cluster split rule.
    Returns ``[{"seed", "faiss", "raysv", "ratio", "faiss_splits", "raysv_splits"}]``."""
    import faiss

    from raysv.clustering.sharded import KMeansSpec, sharded_kmeans
    from raysv.clustering.shards import LocalShards

    n, d = x.shape
    rows = []
    with _no_iteration_lines():
        for seed in seeds:
            rng = np.random.default_rng(seed)
            sample = x[np.sort(rng.choice(n, size=min(n, per_centroid * k), replace=False))]
            start = sample[rng.choice(sample.shape[0], size=k, replace=False)].copy()
            km = faiss.Kmeans(
                d, k, niter=20, seed=seed, max_points_per_centroid=10**9, early_stop_threshold=-1.0
            )
            km.train(sample, init_centroids=start.copy())
            held = LocalShards.from_arrays(np.arange(sample.shape[0]), sample, shards)
            spec = KMeansSpec(
                iterations=20, early_stop=-1.0, seed=seed, max_points_per_centroid=10**9
            )
            ours = sharded_kmeans(held, k, spec, initial=start.copy())
            f, o = objective_all(x, km.centroids), objective_all(x, ours.centroids)
            rows.append(
                {
                    "seed": seed,
                    "faiss": f,
                    "raysv": o,
                    "ratio": round(o / f, 6),
                    "faiss_splits": int(sum(st["nsplit"] for st in km.iteration_stats)),
                    "raysv_splits": int(sum(h["empty_reseeded"] for h in ours.history)),
                }
            )
            log.info("same sample and start, seed %d: raysv / faiss %.4f", seed, o / f)
    return rows


@contextlib.contextmanager
def _no_iteration_lines():
    """Without raysv's per-run k-means lines (20 "k-means iteration" lines and the
    sample's size), in loops over seeds that log one line per seed themselves."""
    from raysv.clustering import sharded

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("k-means iteration", "k-means on a sample"))

    sharded.log.addFilter(keep)
    try:
        yield
    finally:
        sharded.log.removeFilter(keep)


def _objective_seeds(folder: str, d: int, k: int, seeds: list[int], shards: int = 2) -> list[dict]:
    """More independent seeds for the objective only, both sides in this process:
    faiss.Kmeans and raysv's Lloyd iterations over in-memory shards that hold the
    folder's files split as ``raysv cluster --shards`` splits them (so the same
    sample, start and result as the command with that seed: the Ray actors and
    in-memory shards are bit-identical, tests/clustering/test_shards.py), 20
    iterations each, objective over all points.
    Returns ``[{"seed", "faiss", "raysv"}]`` (objectives)."""
    import faiss

    from raysv.clustering.driver import embedding_files
    from raysv.clustering.sharded import KMeansSpec, sharded_kmeans, split_files
    from raysv.clustering.shards import LocalShards

    x = _read_matrix(folder)
    held = LocalShards.from_files(split_files(embedding_files(folder), shards))
    rows = []
    with _no_iteration_lines():
        for seed in seeds:
            km = faiss.Kmeans(d, k, niter=20, seed=seed, early_stop_threshold=-1.0)
            km.train(x)
            ours = sharded_kmeans(held, k, KMeansSpec(iterations=20, early_stop=-1.0, seed=seed))
            rows.append(
                {
                    "seed": seed,
                    "faiss": objective_all(x, km.centroids),
                    "raysv": objective_all(x, ours.centroids),
                }
            )
            log.info(
                "objective seed %d: raysv / faiss %.4f", seed, rows[-1]["raysv"] / rows[-1]["faiss"]
            )
    return rows


def _ours(
    folder: str, out: str, k: int, device: str = "cpu", seed: int = 1, initial: str | None = None
) -> dict:
    """``raysv cluster``'s k-means in a fresh process (its own local Ray); ``initial``:
    a ``.npy`` start, then ``SAME_START_ITERATIONS`` on every point."""
    # Ray runs its workers at nice 15 by default while faiss.Kmeans runs in this
    # process at nice 0; on a shared machine that alone skews the ratio, so the
    # child's Ray workers run at the same priority as the baseline.
    r = subprocess.run(
        [sys.executable, "-c", CHILD, folder, out, str(k), device, str(seed)]
        + ([initial, str(SAME_START_ITERATIONS)] if initial else []),
        capture_output=True,
        text=True,
        timeout=3000,
        env={**os.environ, "RAY_worker_niceness": "0"},
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    log.info(
        "raysv k-means on %s, seed %d%s: %.1f s (shard read %.1f s, %d iterations), objective %.6g",
        os.path.basename(folder),
        seed,
        ", from faiss's start" if initial else "",
        res["kmeans_s"],
        res["load_s"],
        res["iterations"],
        res["objective_all"],
    )
    return res


def run(quick: bool = False, sizes: list[int] | None = None) -> dict:
    """The benchmark; ``sizes``: N of the scaling runs (default ``SIZES``, --quick
    ``QUICK_SIZES``; empty: none)."""
    n, d, k = (50_000, 32, 50) if quick else (1_000_000, 192, 1000)
    sizes = check_sizes(list(QUICK_SIZES if quick else SIZES) if sizes is None else sizes, n, k)
    res: dict = {
        "benchmark": "cluster",
        "data": f"{n} x {d}, k = {k}, 20 iterations (no early stop), 256 points per centroid, "
        "raysv's default shards",
    }
    reps = 1 if quick else REPEATS
    seeds = objective_seeds()
    log.info(
        "k-means benchmark: %d x %d, k = %d: %d raysv/faiss pairs, %d from the same start, "
        "scaling at N = %s",
        n,
        d,
        k,
        reps,
        reps,
        ", ".join(str(v) for v in sizes) or "none",
    )
    with tempfile.TemporaryDirectory() as tmp:
        x = _data(n, d, k)
        folder = _write(x, f"{tmp}/emb")
        small = _write(x[: n // 10], f"{tmp}/emb_small")
        size_data = _size_folders(x, {n: folder, n // 10: small}, sizes, tmp)
        same_sample = same_sample_objectives(x, k, list(range(1, seeds + 1)))
        del x
        # The two sides alternate, REPEATS times: this machine's speed drifts by up to
        # 1.8x over minutes (the same faiss search took 2.0 to 3.6 s per iteration in
        # one hour), so only back-to-back pairs compare; the medians are reported.
        base, ours = [], []
        for r in range(reps):  # ABBA order: whatever runs second in a pair is not favoured
            if r % 2 == 0:
                base.append(_faiss(folder, d, k, seed=r + 1))
                ours.append(_ours(folder, f"{tmp}/out", k, seed=r + 1))
            else:
                ours.append(_ours(folder, f"{tmp}/out", k, seed=r + 1))
                base.append(_faiss(folder, d, k, seed=r + 1))
        # From independent seeded starts each side lands in its own local minimum
        # (on these well-separated blobs the ratio ranges over +-10 % by seed), and
        # even from the same start the two sides' training samples (256 points per
        # centroid, drawn by each) lead to different minima. So the algorithms are
        # also compared from the same start on the same points: faiss.Kmeans's
        # initial centroids for the seed, every point, a few iterations.
        same_start = []
        for r in range(reps):
            faiss_side = _faiss_same_start(folder, d, k, r + 1, f"{tmp}/start_{r + 1}.npy")
            raysv_side = _ours(folder, f"{tmp}/out", k, seed=r + 1, initial=faiss_side["start"])
            same_start.append((raysv_side, faiss_side))
        extra_seeds = _objective_seeds(
            folder, d, k, list(range(reps + 1, seeds + 1)), ours[0]["shards"]
        )
        coverage = init_coverage(
            folder, d, k, list(range(1, COVERAGE_SEEDS + 1)), ours[0]["shards"]
        )
        ours_small = _ours(small, f"{tmp}/out_small", k)
        gpu = _gpu(folder, f"{tmp}/out_gpu", k) if _has_cuda() else None
        scaling = _scaling(size_data, d, k, tmp, {folder: (ours, base)})
    med = lambda rows, key: float(np.median([r[key] for r in rows]))  # noqa: E731
    med_per_it = lambda rows, key: float(np.median([r[key] / r["iterations"] for r in rows]))  # noqa: E731
    pair = lambda f: round(float(np.median([f(o, b) for o, b in zip(ours, base, strict=True)])), 3)  # noqa: E731
    res["repeats"] = reps
    res["faiss_read_s"] = round(med(base, "read_s"), 2)
    res["faiss_train_s"] = round(med(base, "train_s"), 2)
    res["faiss_train_cpu_s"] = round(med(base, "cpu_s"), 2)  # all its threads
    # Both run all 20 iterations (early stopping off on both sides).
    res["faiss_iterations"] = [b["iterations"] for b in base]
    res["raysv_iterations"] = [o["iterations"] for o in ours]
    res["faiss_iteration_s"] = round(med_per_it(base, "train_s"), 3)
    res["faiss_search_share"] = round(med(base, "search_share"), 3)
    res["faiss_objective_all"] = base[0]["objective_all"]
    res["raysv_shards"] = ours[0]["shards"]
    res["raysv_kmeans_s"] = round(med(ours, "kmeans_s"), 2)
    res["raysv_shard_load_s"] = round(med(ours, "load_s"), 2)
    res["raysv_iteration_s"] = round(med(ours, "iter_s"), 3)
    res["raysv_slowest_shard_search_s_per_iteration"] = round(med(ours, "assign_s"), 3)
    res["raysv_slowest_shard_sums_s_per_iteration"] = round(med(ours, "sums_s"), 3)
    res["raysv_iterations_shard_cpu_s"] = round(med(ours, "cpu_s"), 2)
    res["raysv_total_s"] = round(med(ours, "total_s"), 2)
    res["raysv_objective_all"] = ours[0]["objective_all"]
    # per pair (raysv run right after its faiss run), then the median over pairs
    res["time_ratio_per_seed"] = [
        round(o["kmeans_s"] / b["train_s"], 3) for o, b in zip(ours, base, strict=True)
    ]
    res["time_ratio_raysv_over_faiss"] = pair(lambda o, b: o["kmeans_s"] / b["train_s"])
    # faiss.Kmeans gets its data in memory; the sharded run first waits for its
    # actors to read the Parquet shards. Without that wait:
    res["time_ratio_excluding_shard_load"] = pair(
        lambda o, b: (o["kmeans_s"] - o["load_s"]) / b["train_s"]
    )
    # From the same Parquet files to trained centroids, on both sides.
    res["time_ratio_from_files"] = pair(lambda o, b: o["kmeans_s"] / (b["read_s"] + b["train_s"]))
    res["iteration_ratio"] = pair(lambda o, b: o["iter_s"] / (b["train_s"] / b["iterations"]))
    # CPU seconds per iteration: all shards vs all of faiss.Kmeans's threads.
    res["cpu_ratio_per_iteration_raysv_over_faiss"] = pair(
        lambda o, b: (o["cpu_s"] / o["iterations"]) / (b["cpu_s"] / b["iterations"])
    )
    res["objective_ratio_per_seed"] = [
        round(o["objective_all"] / b["objective_all"], 4) for o, b in zip(ours, base, strict=True)
    ]
    res["objective_ratio_raysv_over_faiss"] = float(np.median(res["objective_ratio_per_seed"]))
    # the pairs' seeds and more, for the objective only (one random start is luck)
    res["objective_ratio_all_seeds"] = res["objective_ratio_per_seed"] + [
        round(r["raysv"] / r["faiss"], 4) for r in extra_seeds
    ]
    res["objective_ratio_median_all_seeds"] = float(np.median(res["objective_ratio_all_seeds"]))
    # the same seeds' objectives as two samples (seed s of each side shares nothing)
    res["objectives_all_seeds"] = [
        {"seed": r + 1, "faiss": b["objective_all"], "raysv": o["objective_all"]}
        for r, (o, b) in enumerate(zip(ours, base, strict=True))
    ] + extra_seeds
    res["objective_unpaired"] = unpaired_ratio(
        [r["raysv"] for r in res["objectives_all_seeds"]],
        [r["faiss"] for r in res["objectives_all_seeds"]],
    )
    res["same_start"] = (
        f"faiss.Kmeans's initial centroids (niter=0) for seeds 1-{reps}, then "
        f"{SAME_START_ITERATIONS} iterations on all {n} points on both sides"
    )
    res["objective_ratio_same_start_per_seed"] = [
        round(o["objective_all"] / b["objective_all"], 6) for o, b in same_start
    ]
    # per iteration, both sides: equal objectives until the first split (see above)
    res["same_start_history"] = [
        {
            "seed": r + 1,
            "faiss_objective": b["history_objective"],
            "raysv_objective": o["history_objective"],
            "faiss_splits": b["history_splits"],
            "raysv_splits": o["history_splits"],
        }
        for r, (o, b) in enumerate(same_start)
    ]
    res["objective_ratio_same_start"] = float(np.median(res["objective_ratio_same_start_per_seed"]))
    # the draws alone: blobs the initial centroids fall in, per seed and side
    res["init_coverage"] = coverage_summary(coverage, k)
    res["init_coverage_per_seed"] = coverage
    # the same sample and start, 20 iterations on the sample (what the command runs)
    res["same_sample"] = same_sample
    res["objective_ratio_same_sample_median"] = float(np.median([r["ratio"] for r in same_sample]))
    res["driver_peak_mb_n"] = round(ours[0]["driver_peak_mb"], 1)
    res["driver_peak_mb_n_over_10"] = round(ours_small["driver_peak_mb"], 1)
    res["driver_peak_ratio_10x_n"] = round(
        ours[0]["driver_peak_mb"] / ours_small["driver_peak_mb"], 3
    )
    # The same comparison from small N (Ray's fixed costs) to large N (scaling).
    res["scaling_time_ratio_raysv_over_faiss"] = {
        str(r["n"]): r.get("time_ratio_raysv_over_faiss") for r in scaling
    }
    res["scaling_time_ratio_excluding_shard_load"] = {
        str(r["n"]): r.get("time_ratio_excluding_shard_load") for r in scaling
    }
    res["scaling_objective_ratio_raysv_over_faiss"] = {
        str(r["n"]): r.get("objective_ratio_raysv_over_faiss") for r in scaling
    }
    res["scaling"] = scaling
    if gpu:
        res.update(gpu)
        res["gpu_time_ratio_raysv_over_faiss_cpu"] = round(
            gpu["raysv_gpu_kmeans_s"] / res["faiss_train_s"], 3
        )
        res["gpu_objective_ratio_raysv_over_faiss_cpu"] = round(
            gpu["raysv_gpu_objective_all"] / res["faiss_objective_all"], 4
        )
    return res


def _size_folders(x: np.ndarray, known: dict, sizes: list[int], tmp: str) -> dict:
    """``{N: (folder, copies, how)}`` for the scaling runs, from the main rows ``x``
    (``known``: folders already written, by row count)."""
    n = x.shape[0]
    out = {}
    for size in sizes:
        if size in known:
            how = "the main data" if size == n else f"the main data's first {size} rows"
            out[size] = (known[size], 1, how)
        elif size < n:
            how = f"the main data's first {size} rows"
            out[size] = (_write(x[:size], f"{tmp}/emb_{size}"), 1, how)
        else:
            copies = size // n
            out[size] = (
                _repeat(known[n], f"{tmp}/emb_{size}", copies),
                copies,
                f"the main data's files {copies} times",
            )
    return out


def _scaling(data: dict, d: int, k: int, tmp: str, measured: dict) -> list[dict]:
    """One row per N of ``data`` (:func:`_size_folders`): faiss.Kmeans's train time vs
    raysv's k-means time on the same files, their ratio and objective ratio.

    ``measured``: ``{folder: (raysv runs, faiss runs)}`` already made (the main
    comparison's pairs), reused; any other N is one pair with seed 1, the side
    that goes first alternating from one N to the next. A side that can't run
    (faiss: not enough memory for the matrix; raysv: its command failed) is
    reported as such, and the other sizes still run.
    """
    rows, turn = [], 0
    for size, (folder, copies, how) in sorted(data.items()):
        row: dict = {"n": size, "data": how}
        if folder in measured:
            ours, base = measured[folder]
            row["pairs"] = f"the main comparison's {len(ours)}"
        else:
            need, free = size * d * 4 * 1.1 + 2**30, _mem_available()
            if free is not None and need > free:
                row["faiss_skipped"] = (
                    f"its {size} x {d} matrix needs about {need / 2**30:.1f} GiB; "
                    f"{free / 2**30:.1f} GiB available"
                )
            raysv_first = turn % 2 == 1
            turn += 1
            ours = []
            if raysv_first:
                ours = _ours_or_error(folder, f"{tmp}/out_{size}", k, row)
            base = [] if "faiss_skipped" in row else [_faiss(folder, d, k, 1, copies)]
            if not raysv_first:
                ours = _ours_or_error(folder, f"{tmp}/out_{size}", k, row)
            row["pairs"] = f"one (seed 1), {'raysv' if raysv_first else 'faiss'} first"
        rows.append(_scaling_row(row, ours, base))
    return rows


def _ours_or_error(folder: str, out: str, k: int, row: dict) -> list[dict]:
    """``[`` :func:`_ours` with seed 1 ``]``; a failure (e.g. out of memory at 10M) goes
    into ``row`` and gives ``[]``."""
    try:
        return [_ours(folder, out, k, seed=1)]
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        lines = str(exc).strip().splitlines()
        row["raysv_error"] = lines[-1] if lines else type(exc).__name__
        return []
    finally:
        shutil.rmtree(out, ignore_errors=True)  # at 10M, 10M rows of pseudo labels


def _scaling_row(row: dict, ours: list[dict], base: list[dict]) -> dict:
    """``row`` with the medians (over pairs) of times and ratios."""
    med = lambda rows, f: round(float(np.median([f(r) for r in rows])), 3)  # noqa: E731
    pair = lambda f: round(  # noqa: E731
        float(np.median([f(o, b) for o, b in zip(ours, base, strict=True)])), 3
    )
    if base:
        row["faiss_read_s"] = med(base, lambda b: b["read_s"])
        row["faiss_train_s"] = med(base, lambda b: b["train_s"])
    if ours:
        row["raysv_kmeans_s"] = med(ours, lambda o: o["kmeans_s"])
        row["raysv_shard_load_s"] = med(ours, lambda o: o["load_s"])
        row["raysv_kmeans_s_excluding_shard_load"] = med(
            ours, lambda o: o["kmeans_s"] - o["load_s"]
        )
        row["raysv_total_s"] = med(ours, lambda o: o["total_s"])  # the whole cluster() call
        row["raysv_driver_peak_mb"] = med(ours, lambda o: o["driver_peak_mb"])
    if ours and base:
        row["time_ratio_raysv_over_faiss"] = pair(lambda o, b: o["kmeans_s"] / b["train_s"])
        row["time_ratio_excluding_shard_load"] = pair(
            lambda o, b: (o["kmeans_s"] - o["load_s"]) / b["train_s"]
        )
        row["objective_ratio_raysv_over_faiss"] = round(
            float(
                np.median(
                    [
                        o["objective_all"] / b["objective_all"]
                        for o, b in zip(ours, base, strict=True)
                    ]
                )
            ),
            4,
        )
        row["iterations_faiss_raysv"] = [base[0]["iterations"], ours[0]["iterations"]]
    return row


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def _gpu(folder: str, out: str, k: int) -> dict:
    """The sharded k-means with its shards on the GPU (same data, seed, iterations)."""
    from raysv.clustering import kmeans

    ours = _ours(folder, out, k, device="gpu")
    return {
        "gpu_search_backend": kmeans.gpu_backend(),
        "raysv_gpu_kmeans_s": round(ours["kmeans_s"], 2),
        "raysv_gpu_shard_load_s": round(ours["load_s"], 2),
        "raysv_gpu_iteration_s": round(ours["iter_s"], 3),
        "raysv_gpu_objective_all": ours["objective_all"],
    }
