"""Issue #20: k-means runs behind a small shard protocol.

The in-memory shards (no Ray) run the same Lloyd iterations, purification and
elbow as Ray actors over the same files split the same way, to the bit; the
unit tests of the k-means itself use them.
"""

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysv.clustering import kmeans
from raysv.clustering.driver import embedding_files
from raysv.clustering.sharded import (
    KMeansSpec,
    elbow_table,
    purify_shards,
    sharded_kmeans,
    split_files,
)
from raysv.clustering.shards import EmbeddingShard, LocalShards
from raysv.errors import ConfigError
from tests.clustering.test_kmeans import _skewed, _write_shards


def _run(held, k, spec, out):
    """k-means, final assignment and purification: (result, per-shard assigned, summary)."""
    res = sharded_kmeans(held, k, spec)
    assigned = held.final_assign(res.centroids)
    members = np.sum([c for c, _ in assigned], axis=0)
    pur = purify_shards(held, members, 0.2, 20, 1, str(out))
    return res, assigned, pur


def test_ray_shards_and_in_memory_shards_give_identical_results(tmp_path, ray_local):
    from raysv.clustering.ray_shards import RayShards, start_shards

    x, _ = _skewed(n=3000, k=12, seed=4)
    files = embedding_files(_write_shards(x, str(tmp_path / "emb"), parts=5))
    spec = KMeansSpec(iterations=6, seed=3, init="kmeans++", max_points_per_centroid=100)
    (tmp_path / "ray").mkdir()
    (tmp_path / "mem").mkdir()
    with start_shards(files, 2, normalise=False, device="cpu") as on_ray:
        assert isinstance(on_ray, RayShards) and len(on_ray) == 2
        ray_res, ray_assigned, ray_pur = _run(on_ray, 12, spec, tmp_path / "ray")
        ray_elbow = elbow_table(on_ray, [4, 8], spec)
    assert on_ray.actors == []  # stopped on leaving the block
    in_mem = LocalShards.from_files(split_files(files, 2))
    mem_res, mem_assigned, mem_pur = _run(in_mem, 12, spec, tmp_path / "mem")
    np.testing.assert_array_equal(ray_res.centroids, mem_res.centroids)
    assert [h["objective"] for h in ray_res.history] == [h["objective"] for h in mem_res.history]
    assert ray_res.history[-1]["objective"] < ray_res.history[0]["objective"]  # it did iterate
    for (rc, ro), (mc, mo) in zip(ray_assigned, mem_assigned, strict=True):
        np.testing.assert_array_equal(rc, mc)
        assert ro == mo
    assert ray_pur == mem_pur and 0 < ray_pur["kept"] < ray_pur["rows"] == 3000
    for part in ("part-00000.parquet", "part-00001.parquet"):
        assert pq.read_table(tmp_path / "ray" / part).equals(pq.read_table(tmp_path / "mem" / part))
    assert [(r["k"], r["objective"]) for r in ray_elbow] == [
        (r["k"], r["objective"]) for r in elbow_table(in_mem, [4, 8], spec)
    ]


def _kill_once(method: str, nth: int):
    """Ray shards that, before the ``nth`` call of ``method``, SIGKILL the process of
    shard 1's actor (a real death, as when its node is lost)."""
    from raysv.clustering.ray_shards import RayShards

    class KillOnce(RayShards):
        seen, killed = 0, None

        def each(self, name, *args, per_shard=None):
            import os
            import signal

            import ray

            if name == method:
                self.seen += 1
                if self.seen == nth:
                    pid = ray.get(self.actors[1].__ray_call__.remote(lambda _s: os.getpid()))
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
            return super().each(name, *args, per_shard=per_shard)

    return KillOnce


@pytest.mark.parametrize(
    "method, nth", [("stats", 3), ("final_assign", 1), ("drop_far", 1), ("labels_table", 1)]
)
def test_a_killed_shard_actor_is_started_again_and_the_results_do_not_change(
    method, nth, tmp_path, ray_local
):
    """Issue #23: a shard actor lost mid-iterations, in a call that changes its state
    (the final assignment, purification's drop), or after them (its labels and kept
    rows live only in that actor), is started again, replays its state and the run
    ends as an uninterrupted one does."""
    from raysv.clustering.ray_shards import start_shards

    x, _ = _skewed(n=3000, k=12, seed=4)
    files = embedding_files(_write_shards(x, str(tmp_path / "emb"), parts=5))
    spec = KMeansSpec(iterations=6, seed=3, init="kmeans++", max_points_per_centroid=100)
    (tmp_path / "ray").mkdir()
    (tmp_path / "mem").mkdir()
    started = start_shards(files, 2, normalise=False, device="cpu")
    with _kill_once(method, nth)(started.actors, started.start) as on_ray:
        first = on_ray.actors[1]
        ray_res, ray_assigned, ray_pur = _run(on_ray, 12, spec, tmp_path / "ray")
        assert on_ray.killed is not None and on_ray.restarts == [0, 1]
        assert on_ray.actors[1] is not first
    in_mem = LocalShards.from_files(split_files(files, 2))
    mem_res, mem_assigned, mem_pur = _run(in_mem, 12, spec, tmp_path / "mem")
    np.testing.assert_array_equal(ray_res.centroids, mem_res.centroids)
    for (rc, ro), (mc, mo) in zip(ray_assigned, mem_assigned, strict=True):
        np.testing.assert_array_equal(rc, mc)
        assert ro == mo
    assert ray_pur == mem_pur
    for part in ("part-00000.parquet", "part-00001.parquet"):
        assert pq.read_table(tmp_path / "ray" / part).equals(pq.read_table(tmp_path / "mem" / part))


@pytest.mark.parametrize("drop_fraction", [0.0, 0.25])
def test_in_memory_purification_equals_one_process_purify(drop_fraction, tmp_path):
    x, _ = _skewed(n=2000, k=8, seed=2)
    x = np.concatenate([x, x[:300]])  # duplicates tie at the cut
    ids = np.array([f"u{i:05d}" for i in range(len(x))])
    held = LocalShards.from_arrays(ids, x, shards=3)
    res = sharded_kmeans(held, 8, KMeansSpec(iterations=4))
    members = np.sum([c for c, _ in held.final_assign(res.centroids)], axis=0)
    pur = purify_shards(held, members, drop_fraction, 60, 2, str(tmp_path))
    t = pq.read_table([str(tmp_path / f"part-{i:05d}.parquet") for i in range(3)])
    labels, dist = kmeans.assign(x, res.centroids)
    kept, new_ids = kmeans.purify(labels, dist, drop_fraction, 60)
    assert t["utt_id"].to_pylist() == ids.tolist()
    np.testing.assert_array_equal(t["kept"].to_numpy(), kept)
    np.testing.assert_array_equal(t["cluster"].to_numpy(), new_ids)
    assert set(t["round"].to_pylist()) == {2}
    assert pur["kept"] == int(kept.sum()) and pur["rows"] == len(x)
    assert (~kept).sum() >= round(drop_fraction * len(x))


def test_in_memory_shards_check_their_inputs():
    with pytest.raises(ConfigError, match="at least one shard"):
        LocalShards([])
    with pytest.raises(ConfigError, match=r"need ids \(n,\) and x \(n, d\)"):
        EmbeddingShard.from_arrays(np.arange(3), np.zeros((4, 2), np.float32))
    held = LocalShards.from_arrays(np.arange(10), np.ones((10, 2), np.float32), shards=20)
    assert len(held) == 10 and held.counts() == [1] * 10  # never an empty shard
    with pytest.raises(ValueError, match="2 per-shard arguments for 10 shards"):
        held.each("sample", per_shard=[(1, 0), (1, 0)])
    unit = LocalShards.from_arrays(np.arange(4), np.full((4, 2), 3.0, np.float32), normalise=True)
    assert unit.sample([4], 0) == pytest.approx(np.full((4, 2), 2**-0.5))


def test_the_kmeans_and_its_in_memory_shards_do_not_import_ray():
    import subprocess
    import sys

    code = (
        "import sys, raysv.clustering.sharded, raysv.clustering.shards, raysv.clustering.kmeans\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
