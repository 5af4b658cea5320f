"""Issue #19: raysv's sharded Lloyd iterations are faiss's, step for step.

From the same initial centroids on the same points (no cluster empties), the
centroids after 5 iterations equal faiss.Clustering's to float32 tolerance, for
one and several shards, Euclidean and spherical; the split of an empty cluster
is faiss's (tested on its own); from independent seeded starts the median
all-points objective over 5 seeds is within 1 % of faiss.Kmeans's.
"""

import itertools

import faiss
import numpy as np
import pytest

from raysv.clustering import kmeans
from raysv.clustering.driver import cluster
from raysv.clustering.sharded import KMeansSpec, draw_start, sharded_kmeans
from raysv.clustering.shards import EmbeddingShard, LocalShards
from tests.clustering.test_kmeans import _write_shards


def _faiss_from(x: np.ndarray, c0: np.ndarray, iterations: int, spherical: bool):
    """faiss.Clustering started from ``c0`` on all of ``x``: (centroids, objectives, splits)."""
    k, d = c0.shape
    cp = faiss.ClusteringParameters()
    cp.niter, cp.spherical, cp.max_points_per_centroid = iterations, spherical, 10**9
    cp.min_points_per_centroid = 1
    clus = faiss.Clustering(d, k, cp)
    faiss.copy_array_to_vector(np.ascontiguousarray(c0, np.float32).ravel(), clus.centroids)
    clus.train(x, faiss.IndexFlatL2(d))
    stats = [clus.iteration_stats.at(i) for i in range(clus.iteration_stats.size())]
    cent = faiss.vector_to_array(clus.centroids).reshape(k, d)
    return cent, [s.obj for s in stats], sum(s.nsplit for s in stats)


@pytest.mark.parametrize("spherical", [False, True], ids=["euclidean", "spherical"])
@pytest.mark.parametrize("shards", [1, 3])
def test_lloyd_iterations_equal_faiss_from_the_same_start(spherical, shards):
    # Blobs that overlap a little, each centroid starting at one random point of its own
    # blob: no cluster empties and few points lie near a boundary. (On structureless
    # data the float32 sums alone, whose order differs from faiss's, flip a borderline
    # point within 5 iterations in some seeds, and one flip moves a centroid by 1 %.)
    rng = np.random.default_rng(7)
    k = 10
    blob = rng.integers(0, k, 3000)
    x = (rng.standard_normal((k, 12)) * 1.5 + 2.0)[blob] + rng.standard_normal((3000, 12))
    x = x.astype(np.float32)
    c0 = np.stack([x[rng.choice(np.flatnonzero(blob == b))] for b in range(k)])
    data = x / np.linalg.norm(x, axis=1, keepdims=True) if spherical else x  # shards normalise
    ref, ref_obj, splits = _faiss_from(data, c0, 5, spherical)
    assert splits == 0  # the precondition: no cluster empties (splitting is tested below)
    # in-memory shards (the Ray ones give the same results: test_shards.py)
    held = LocalShards.from_arrays(np.arange(len(x)), x, shards, normalise=spherical)
    spec = KMeansSpec(
        iterations=5, early_stop=-1.0, spherical=spherical, max_points_per_centroid=10**9
    )
    res = sharded_kmeans(held, k, spec, initial=c0)
    # faiss adds the objective up in float32 (Clustering.cpp: float obj), raysv in float64
    assert [h["objective"] for h in res.history] == pytest.approx(ref_obj, rel=1e-4)
    np.testing.assert_allclose(res.centroids, ref, atol=2e-5)
    moved = np.abs(ref - (c0 / np.linalg.norm(c0, axis=1, keepdims=True) if spherical else c0))
    assert moved.max() > 0.1  # the iterations did move the centroids: equality is not trivial


def test_an_empty_cluster_is_split_as_faiss_splits():
    """The copy of a populous centroid, both scaled by 1 +/- 1/1024 with signs alternating
    over dimensions; counts shared; a cluster of one point is never split."""
    c = np.array([[1.0, 2.0, -4.0], [9.0, 9.0, 9.0], [0.5, 0.5, 0.5]], np.float32)
    sums = np.array([[10.0, 20.0, -40.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    counts = np.array([10, 0, 1])
    cent, n = kmeans.update(sums, counts, c, False, np.random.default_rng(0))
    eps = np.array([1, -1, 1]) / 1024
    assert n == 1
    np.testing.assert_allclose(cent[1], c[0] * (1 + eps), rtol=1e-6)
    np.testing.assert_allclose(cent[0], c[0] * (1 - eps), rtol=1e-6)
    np.testing.assert_array_equal(cent[2], c[2])
    picks = [
        int(
            np.argmax(
                np.abs(
                    kmeans.update(
                        np.array([[3.0], [0.0], [1.0], [6.0]]),
                        np.array([3, 0, 1, 2]),
                        np.ones((4, 1), np.float32),
                        False,
                        np.random.default_rng(s),
                    )[0][[0, 3], 0]
                    - [1.0, 3.0]
                )
            )
        )
        for s in range(200)
    ]
    share_first = picks.count(0) / len(picks)  # (3 - 1) / ((3 - 1) + (2 - 1)) = 2/3 of the splits
    assert 0.55 < share_first < 0.78


def _uniform(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_the_sample_and_the_start_are_uniform_draws_over_uneven_shards():
    """What remains different from faiss by design is how the random numbers are made,
    not each row's chance: over 2000 seeds, each of 600 rows held by shards of 50, 150
    and 400 rows is in the training sample (200 rows) and among the initial centroids
    (k = 20) as often as a uniform draw puts it there (faiss: a random permutation's
    first rows). An equal share per shard (the start's chi-square p is then ~0) or a
    sample of the first rows (rows 1,320 times in the sample, or never) fails this."""
    from scipy.stats import chisquare

    n, k, seeds = 600, 20, 2000
    x = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32)  # row = its x[:, 0]
    cuts = [0, 50, 200, n]
    shards = LocalShards(
        [EmbeddingShard.from_arrays(np.arange(a, b), x[a:b]) for a, b in itertools.pairwise(cuts)]
    )
    in_sample, in_start = np.zeros(n), np.zeros(n)
    for seed in range(seeds):
        spec = KMeansSpec(seed=seed, max_points_per_centroid=10)  # a sample of 10 k = 200 rows
        sizes, cent, _ = draw_start(shards, k, spec)
        assert sizes == [17, 50, 133]  # in proportion to the shards' rows
        for shard in shards.shards:
            in_sample[shard.train[:, 0].astype(int)] += 1
        rows = cent[:, 0].astype(int)
        assert len(set(rows)) == k  # k distinct rows of the sample
        in_start[rows] += 1
    # each row is in the sample with probability 200/600 (to rounding per shard: 17/50,
    # 50/150, 133/400): stratified, so far tighter than a chi-square would allow
    share = np.repeat(np.array(sizes) / np.diff(cuts), np.diff(cuts)) * seeds
    assert np.abs(in_sample - share).max() < 5 * np.sqrt(seeds * 0.25)
    assert in_start.sum() == seeds * k
    assert chisquare(in_start).pvalue > 1e-3  # each row k / n of the time
    per_shard = [in_start[a:b].sum() / (seeds * k) for a, b in itertools.pairwise(cuts)]
    np.testing.assert_allclose(per_shard, np.diff(cuts) / n, atol=0.01)


def test_a_small_shard_never_leaves_the_start_short_of_k():
    """k centroids, all distinct rows, also where a shard holds fewer rows than its
    multinomial share of k may ask for (shards of 4 and 996 rows, k = 400: before, some
    seeds came back with 399 centroids and k-means ran on with them)."""
    x = np.stack([np.arange(1000), np.zeros(1000)], axis=1).astype(np.float32)
    shards = LocalShards(
        [EmbeddingShard.from_arrays(np.arange(a, b), x[a:b]) for a, b in ((0, 4), (4, 1000))]
    )
    for seed in range(200):
        _, cent, _ = draw_start(shards, 400, KMeansSpec(seed=seed))
        assert cent.shape == (400, 2) and len(set(cent[:, 0].tolist())) == 400, seed
    # a sample of about k rows (1 per centroid) that rounding per shard left short
    thirds = LocalShards.from_arrays(np.arange(300), x[:300], 3)
    for seed in range(20):
        sizes, cent, _ = draw_start(thirds, 100, KMeansSpec(seed=seed, max_points_per_centroid=1))
        assert sum(sizes) == 100 and len(set(cent[:, 0].tolist())) == 100, seed


def _skewed_overlapping(n, d, components, seed):
    """Zipf-sized Gaussian clusters that overlap (centres ~ N(0, 1), noise N(0, 1)).

    Overlapping on purpose: with well-separated blobs (centres x 4) each seed lands
    in another local minimum and faiss's own objective swings by +-7 % over 5 seeds,
    more than the 1 % this test resolves; here faiss's seeds agree within 0.4 %.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((components, d))
    w = 1.0 / np.arange(1, components + 1) ** 1.5
    lab = rng.choice(components, size=n, p=w / w.sum())
    return (centres[lab] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.slow  # ~20 s each on 2 cores: 5 seeds x (faiss + a Ray k-means) at 100k x 64
@pytest.mark.parametrize("data", ["uniform", "skewed"])
def test_median_objective_over_seeds_within_one_percent_of_faiss(data, tmp_path, ray_local):
    n, d, k = 100_000, 64, 200
    x = _uniform(n, d, 3) if data == "uniform" else _skewed_overlapping(n, d, 400, 3)
    emb = _write_shards(x, str(tmp_path / "emb"))
    index = faiss.IndexFlatL2(d)

    def objective(c):
        index.reset()
        index.add(np.ascontiguousarray(c, np.float32))
        return float(index.search(x, 1)[0].astype(np.float64).sum())

    ours, theirs = [], []
    for seed in range(1, 6):
        ref = faiss.Kmeans(d, k, niter=20, seed=seed)  # 256 points per centroid, as ours
        ref.train(x)
        theirs.append(objective(ref.centroids))
        s = cluster(
            emb,
            str(tmp_path / f"o{seed}"),
            k,
            KMeansSpec(iterations=20, early_stop=-1.0, seed=seed),
            shards=2,
        )
        ours.append(s["objective_all_points"])
    ratio = np.median(ours) / np.median(theirs)
    print(
        f"{data}: median objective raysv / faiss = {ratio:.4f} "
        f"(per seed {[round(a / b, 4) for a, b in zip(ours, theirs, strict=True)]})"
    )
    assert ratio <= 1.01
