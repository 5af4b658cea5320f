"""p, S and LGL's share derived from the corpus (``auto`` in the round schedule)."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysv.clustering import kmeans
from raysv.clustering.auto_schedule import auto_purification, lgl_share
from raysv.clustering.driver import cluster
from raysv.clustering.sharded import KMeansSpec
from raysv.errors import ConfigError
from tests.clustering.test_kmeans import _skewed, _write_shards


def test_auto_purification_follows_the_mean_cluster_size():
    # small corpora (m ~ 10): the demo's tuned p = 0.1, S = 3, in every round
    assert auto_purification(480, 50, 1) == (0.1, 3)
    assert auto_purification(1200, 125, 3) == (0.1, 3)
    # VoxCeleb2-sized (m ~ 180): the paper's p per round (0.6, 0.4 .., 0.3) and S = 10
    assert [auto_purification(1_090_000, 6000, r) for r in (1, 2, 4, 5)] == [
        (0.6, 10),
        (0.4, 10),
        (0.4, 10),
        (0.3, 10),
    ]
    # in between: keep 9 per cluster on average
    p, s = auto_purification(3600, 200, 1)  # m = 18
    assert p == pytest.approx(0.5) and s == 4
    assert auto_purification(60, 40, 1) == (0.1, 2)  # tiny clusters: S never below 2
    with pytest.raises(ValueError):
        auto_purification(0, 3, 1)


def test_lgl_share_grows_ten_points_per_round():
    assert [lgl_share(r) for r in range(1, 8)] == [0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9]


def test_next_tau_lets_the_share_through():
    from raysv.config import load_config
    from raysv.training.stage2_config import Stage2Config
    from raysv.training.stage2_worker import next_tau

    cfg = load_config(
        Stage2Config,
        None,
        ["gate.name=lgl", "gate.share=0.7", "gate.warmup_epochs=1", "head_warmup_epochs=0"],
    )
    losses = np.random.default_rng(0).exponential(2.0, 1000)
    tau = next_tau(cfg, 0, losses)
    assert (losses <= tau).mean() == pytest.approx(0.7, abs=0.002)
    with pytest.raises(ConfigError, match="gate.share"):
        load_config(Stage2Config, None, ["gate.name=lgl", "gate.share=0"])


def test_cluster_resolves_auto_p_and_s_and_records_them(tmp_path, ray_local):
    x, _ = _skewed(n=3000, k=12, seed=4)
    emb = _write_shards(x, str(tmp_path / "emb"), parts=2)
    out = tmp_path / "out"
    s = cluster(
        emb,
        str(out),
        12,
        KMeansSpec(iterations=5),
        shards=2,
        drop_fraction="auto",
        min_cluster_size="auto",
        round_=2,
    )
    p, smin = auto_purification(3000, 12, 2)  # m = 250: p = 0.4 (round 2's cap), S = 10
    assert (p, smin) == (0.4, 10)
    assert s["purification"] == {"p": p, "S": smin, "auto": ["p", "S"], "mean_cluster_size": 250.0}
    t = pq.read_table([str(q) for q in sorted(out.glob("part-*.parquet"))])
    raw, _ = kmeans.assign(
        x[[int(u[1:]) for u in t["utt_id"].to_pylist()]], np.load(out / "_centroids.npy")
    )
    kept, _ = kmeans.purify(raw, t["distance"].to_numpy(), p, smin)
    assert np.array_equal(t["kept"].to_numpy(), kept)
    with pytest.raises(ConfigError, match="drop fraction"):
        cluster(emb, str(tmp_path / "o2"), 12, drop_fraction=1.5, min_cluster_size="auto")
