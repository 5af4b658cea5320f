"""Sharded k-means against faiss.Kmeans, purification, and bad k."""

import dataclasses
import os
import re

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysv.clustering import kmeans
from raysv.clustering.driver import cluster
from raysv.clustering.sharded import KMeansSpec
from raysv.errors import ConfigError


def _skewed(n=6000, d=16, k=20, seed=0):
    """Clusters with very unequal sizes (Zipf-like weights)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 4
    w = 1.0 / np.arange(1, k + 1) ** 1.5
    lab = rng.choice(k, size=n, p=w / w.sum())
    return (centres[lab] + rng.standard_normal((n, d))).astype(np.float32), lab


def _write_shards(x, folder, parts=4):
    os.makedirs(folder, exist_ok=True)
    ids = np.array([f"u{i:06d}" for i in range(x.shape[0])])
    for p, idx in enumerate(np.array_split(np.arange(x.shape[0]), parts)):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[idx].ravel()), x.shape[1])
        pq.write_table(
            pa.table({"utt_id": ids[idx], "embedding": emb}), os.path.join(folder, f"p{p}.parquet")
        )
    open(os.path.join(folder, "_SUCCESS"), "w").close()  # complete, as another tool marks it
    return folder


def _objective(x, c):
    return float(kmeans.assign(x, c)[1].astype(np.float64).sum())


@pytest.mark.parametrize("skewed", [False, True])
def test_sharded_objective_within_one_percent_of_faiss(skewed, tmp_path, ray_local):
    if skewed:
        x, _ = _skewed()
    else:
        x = np.random.default_rng(1).standard_normal((6000, 16)).astype(np.float32)
    k, it = 20, 20
    ref = faiss.Kmeans(16, k, niter=it, seed=1, max_points_per_centroid=10**9)
    ref.train(x)
    ref_obj = _objective(x, ref.centroids)
    s = cluster(
        _write_shards(x, str(tmp_path / "emb")),
        str(tmp_path / "out"),
        k,
        KMeansSpec(iterations=it, seed=1, max_points_per_centroid=10**9),
        shards=2,
    )
    ours = _objective(x, np.load(tmp_path / "out" / "_centroids.npy"))
    assert ours <= ref_obj * 1.01, (ours, ref_obj)
    assert s["embeddings"] == 6000 and len(s["history"]) == s["iterations"] <= it
    objs = [h["objective"] for h in s["history"]]
    assert objs[-1] <= objs[0]
    # Same seed, same result.
    s2 = cluster(
        str(tmp_path / "emb"),
        str(tmp_path / "out2"),
        k,
        KMeansSpec(iterations=it, seed=1, max_points_per_centroid=10**9),
        shards=2,
    )
    assert s2["objective"] == pytest.approx(s["objective"], rel=1e-6)
    t = pq.read_table(str(tmp_path / "out"))
    assert t.num_rows == 6000 and set(t.column_names) == {
        "utt_id",
        "cluster",
        "distance",
        "kept",
        "round",
    }


@pytest.mark.parametrize("early_stop", [0.0, 1e-4])
def test_stops_when_the_objective_stops_falling(early_stop, tmp_path, ray_local):
    """faiss's rule: stop at the first iteration whose objective fell by at most
    ``early_stop`` times the last one (0: did not fall)."""
    x, _ = _skewed(n=4000, k=10, seed=5)
    if early_stop == 0.0:  # well separated: the assignment settles, the objective stays put
        rng = np.random.default_rng(5)
        centres = rng.standard_normal((10, 16)) * 20
        x = (centres[rng.integers(0, 10, 4000)] + rng.standard_normal((4000, 16))).astype(
            np.float32
        )
    emb = _write_shards(x, str(tmp_path / "emb"))
    spec = KMeansSpec(iterations=40, early_stop=-1.0, seed=1, max_points_per_centroid=10**9)
    full = cluster(emb, str(tmp_path / "full"), 10, spec, shards=2)
    objs = [h["objective"] for h in full["history"]]
    assert full["iterations"] == len(objs) == 40
    stop = next(i for i in range(1, 40) if objs[i - 1] - objs[i] <= early_stop * objs[i - 1])
    spec = dataclasses.replace(spec, early_stop=early_stop)
    early = cluster(emb, str(tmp_path / "early"), 10, spec, shards=2)
    assert early["iterations"] == stop + 1 < 40 and early["max_iterations"] == 40
    assert [h["objective"] for h in early["history"]] == pytest.approx(objs[: stop + 1], rel=1e-9)


def test_subsampled_like_faiss(tmp_path, ray_local):
    """With faiss's default of 256 points per centroid both iterate on a sample;
    the final objective over all points stays within 1 %."""
    x, _ = _skewed(n=12000, k=20, seed=3)
    ref = faiss.Kmeans(16, 20, niter=20, seed=1)  # max_points_per_centroid=256 -> 5120 points
    ref.train(x)
    s = cluster(
        _write_shards(x, str(tmp_path / "emb")),
        str(tmp_path / "out"),
        20,
        KMeansSpec(iterations=20, seed=1),
        shards=2,
    )
    ours = s["objective_all_points"]
    assert ours == pytest.approx(
        _objective(x, np.load(tmp_path / "out" / "_centroids.npy")), rel=1e-4
    )
    assert ours <= _objective(x, ref.centroids) * 1.01


def test_bad_k_is_a_clear_error(tmp_path, ray_local):
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    with pytest.raises(ConfigError, match="k = 60 clusters is more than the 50 embeddings"):
        cluster(_write_shards(x, str(tmp_path / "e"), parts=2), str(tmp_path / "o"), 60)
    with pytest.raises(ConfigError, match="k = 30 leaves fewer than 2 embeddings per cluster"):
        cluster(str(tmp_path / "e"), str(tmp_path / "o"), 30)
    with pytest.raises(ConfigError, match="fewer than 5 embeddings per cluster.*k <= 10"):
        kmeans.check_k(20, 50, min_per_cluster=5)
    assert kmeans.check_k(25, 50) == (
        "k = 25 gives 2.0 embeddings per cluster on average, fewer than the 39 faiss asks for "
        "a stable fit: expect small, noisy clusters (k <= 1 avoids this)"
    )
    assert kmeans.check_k(10, 390) is None


def test_default_shards_are_two_per_node_and_a_bad_count_is_refused(tmp_path, ray_local):
    import ray

    x, _ = _skewed(n=800, d=8, k=4)
    emb = _write_shards(x, str(tmp_path / "e"), parts=4)
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    s = cluster(emb, str(tmp_path / "o"), 4, KMeansSpec(iterations=2))
    assert s["shards"] == 2 * len(nodes) and s["embeddings"] == 800
    with pytest.raises(ConfigError, match="shards must be >= 1, got 0"):
        cluster(emb, str(tmp_path / "o2"), 4, KMeansSpec(iterations=2), shards=0)


def test_bad_kmeans_settings_fail_before_any_shard_starts():
    with pytest.raises(
        ConfigError, match=re.escape("init must be one of random, kmeans++; got 'kmeans+'")
    ):
        KMeansSpec(init="kmeans+")
    with pytest.raises(ConfigError, match="iterations must be >= 1, got 0"):
        KMeansSpec(iterations=0)
    with pytest.raises(ConfigError, match="max_points_per_centroid must be >= 1, got 0"):
        KMeansSpec(max_points_per_centroid=0)
    with pytest.raises(ConfigError, match="init_points_per_centroid must be >= 1, got 0"):
        KMeansSpec(init="kmeans++", init_points_per_centroid=0)


def test_bad_initial_centroids_are_refused_before_any_shard_starts(tmp_path):
    """cluster(initial=): a start of the wrong shape, with NaN, or with k = auto is one
    ConfigError before any work (no Ray started: no ray_local fixture), nothing written;
    with a d that differs from the data's, the message names both."""
    folder = _write_shards(_skewed(600, 8, 5)[0], str(tmp_path / "emb"))
    out = str(tmp_path / "labels")
    good = np.ones((5, 8), np.float32)
    with pytest.raises(ConfigError, match=re.escape(r"need (k, d) = (5, d)")):
        cluster(folder, out, 5, initial=good[:4])
    with pytest.raises(ConfigError, match=re.escape(r"shape (40,); need (k, d)")):
        cluster(folder, out, 5, initial=good.ravel())
    bad = good.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ConfigError, match="NaN or infinite"):
        cluster(folder, out, 5, initial=bad)
    with pytest.raises(ConfigError, match="need a given k, not k = auto"):
        cluster(folder, out, "auto", initial=good)
    assert not os.path.exists(out)


def test_initial_centroids_of_another_dimension_name_the_datas(tmp_path):
    """The in-memory shards: d is known once the shards are read; the message says both."""
    from raysv.clustering.sharded import sharded_kmeans
    from raysv.clustering.shards import LocalShards

    x = _skewed(600, 8, 5)[0]
    held = LocalShards.from_arrays(np.arange(600), x, 2)
    with pytest.raises(ConfigError, match=re.escape("shape (5, 6); need (k, d) = (5, 8)")):
        sharded_kmeans(held, 5, KMeansSpec(), initial=np.ones((5, 6), np.float32))


def test_unreadable_embedding_files_are_named_not_a_traceback(tmp_path, ray_local, capsys):
    from raysv.cli import main
    from raysv.errors import ManifestError

    x, _ = _skewed(n=800, d=8, k=4)
    emb = _write_shards(x, str(tmp_path / "e"), parts=4)
    bad = os.path.join(emb, "p2.parquet")
    with open(bad, "wb") as f:
        f.write(b"PAR1 not parquet at all" * 4)
    with pytest.raises(ManifestError, match=re.escape(f"{bad}: not a readable Parquet file")):
        cluster(emb, str(tmp_path / "o"), 4, KMeansSpec(iterations=2))
    argv = ["cluster", "--embeddings", emb, "--k", "4", "--out", str(tmp_path / "o2")]
    assert main([*argv, "--no-tracking"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"raysv cluster: error: {bad}: not a readable Parquet file")
    assert not any("Traceback" in line for line in err)
    pq.write_table(pa.table({"utt_id": ["a"], "vec": [1.0]}), bad)  # Parquet, wrong columns
    with pytest.raises(
        ManifestError, match=re.escape(f"{bad}: no column embedding (has utt_id, vec)")
    ):
        cluster(emb, str(tmp_path / "o3"), 4, KMeansSpec(iterations=2))


def test_update_reseeds_empty_clusters():
    rng = np.random.default_rng(0)
    sums = np.array([[10.0, 0.0], [0.0, 0.0], [3.0, 3.0]])
    counts = np.array([10, 0, 3])
    cent, n_empty = kmeans.update(sums, counts, np.zeros((3, 2), np.float32), False, rng)
    assert n_empty == 1
    # twins differ by 2/1024 of each coordinate (faiss's split; see test_kmeans_parity.py)
    assert np.allclose(cent[1], cent[0], atol=3e-3) or np.allclose(cent[1], cent[2], atol=3e-3)
    assert not np.array_equal(cent[1], cent[0])


def test_purify_drops_far_points_then_small_clusters():
    clusters = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    dist = np.array([0.1, 0.2, 0.3, 9.0, 0.1, 0.2, 0.1, 0.1, 0.2])
    kept, ids = kmeans.purify(clusters, dist, drop_fraction=1 / 9, min_size=3)
    assert kept.tolist() == [True, True, True, False, False, False, True, True, True]
    assert ids.tolist() == [0, 0, 0, 0, 2, 2, 1, 1, 1]  # survivors 0..1, dropped cluster after
    with pytest.raises(ConfigError, match="drop fraction"):
        kmeans.purify(clusters, dist, 1.0, 1)


@pytest.mark.parametrize("drop_fraction", [0.0, 0.1, 0.37, 0.9])
def test_purification_from_shard_histograms_equals_one_process_purify(drop_fraction):
    """The shards' exact cut (two key histograms, ties handed out in shard order)
    drops the same rows as a stable sort of all distances, ties and signs included."""
    rng = np.random.default_rng(7)
    n, k = 5000, 40
    labels = rng.integers(0, k, n)
    dist = rng.choice(np.float32([0.5, 1.0, 1.0, 2.5, 3.0]), n)  # many ties at any cut
    dist[:50] = rng.standard_normal(50).astype(np.float32) * 1e-6  # faiss's tiny negatives
    dist[50:60] = np.float32(-0.0)
    dist[60:] += rng.random(n - 60).astype(np.float32) * (rng.random(n - 60) < 0.5)
    ref_kept, ref_ids = kmeans.purify(labels, dist, drop_fraction, min_size=100)

    parts = np.split(np.arange(n), [1200, 1201, 3000])  # unequal shards, one of one row
    keys = [kmeans.distance_keys(dist[p]) for p in parts]
    n_drop = int(round(drop_fraction * n))
    quotas, cut = [0] * len(parts), None
    if n_drop:
        high, above = kmeans.bucket_of_rank(sum(kmeans.key_histogram(c) for c in keys), n_drop)
        low_hist = sum(kmeans.key_histogram(c, high) for c in keys)
        low, above_low = kmeans.bucket_of_rank(low_hist, n_drop - above)
        cut = (high << 16) | low
        ties = [int((c == cut).sum()) for c in keys]
        quotas = kmeans.tie_quotas(ties, n_drop - above - above_low)
    kept = np.concatenate(
        [
            ~kmeans.drop_mask(c, cut, q) if cut is not None else np.ones(len(c), bool)
            for c, q in zip(keys, quotas, strict=True)
        ]
    )
    assert (~kept).sum() == n_drop
    sizes = np.bincount(labels[kept], minlength=k)
    remap = kmeans.remap_clusters(sizes, np.bincount(labels, minlength=k) > 0, 100)
    kept &= sizes[labels] >= 100
    assert np.array_equal(kept, ref_kept) and np.array_equal(remap[labels], ref_ids)
    # keys order like the floats they come from
    order = np.argsort(kmeans.distance_keys(dist), kind="stable")
    assert np.all(np.diff(dist[order].astype(np.float64)) >= 0)


def test_sharded_purification_matches_one_process_purify(tmp_path, ray_local):
    """cluster() purifies inside the shards: same kept rows and ids as kmeans.purify
    over all rows in shard order, with duplicated rows tying at the cut."""
    x, _ = _skewed(n=3000, k=12, seed=4)
    x = np.concatenate([x, x[:600], x[:600]])  # exact duplicates: equal distances
    emb = _write_shards(x, str(tmp_path / "emb"), parts=4)
    out = tmp_path / "out"
    s = cluster(
        emb,
        str(out),
        12,
        KMeansSpec(iterations=5),
        shards=3,
        drop_fraction=0.2,
        min_cluster_size=150,
    )
    t = pq.read_table([str(p) for p in sorted(out.glob("part-*.parquet"))])
    rows = {u: i for i, u in enumerate(pq.read_table(emb)["utt_id"].to_pylist())}
    xs = x[[rows[u] for u in t["utt_id"].to_pylist()]]
    raw, _ = kmeans.assign(xs, np.load(out / "_centroids.npy"))
    dist = t["distance"].to_numpy()
    kept, ids = kmeans.purify(raw, dist, 0.2, 150)
    assert np.array_equal(t["kept"].to_numpy(), kept)
    assert np.array_equal(t["cluster"].to_numpy(), ids)
    assert s["kept_share"] == pytest.approx(kept.mean())
    assert s["clusters_after_purification"] == int(ids[kept].max()) + 1
    assert s["objective_all_points"] == pytest.approx(float(dist.astype(np.float64).sum()))
    with pytest.raises(ConfigError, match="min cluster size S must be >= 1, got 0"):
        cluster(emb, str(tmp_path / "o2"), 12, min_cluster_size=0)


def test_cli_embed_with_checkpoint_then_cluster(
    tiny_corpus, tmp_path, ray_local, capsys, monkeypatch
):
    """A Stage I checkpoint embeds a manifest on Ray Data; the CLI clusters it with analysis."""
    import json

    monkeypatch.chdir(tmp_path)  # MLflow's SQLite store keeps artifacts under ./mlruns

    import torch

    from raysv.cli import main
    from raysv.config import from_dict, to_dict
    from raysv.data.corpus import prepare_corpus
    from raysv.training.config import PretrainConfig
    from raysv.training.pretrain_worker import build_modules

    cfg = from_dict(
        PretrainConfig,
        {
            "data": {"data": tiny_corpus, "n_mels": 24},
            "model": {
                "name": "ecapa",
                "kwargs": {"channels": 16, "embed_dim": 8, "attn_bottleneck": 8},
            },
        },
    )
    enc, _, _ = build_modules(cfg)
    ckpt = str(tmp_path / "best_model.pt")
    torch.save({"model": enc.state_dict(), "config": to_dict(cfg)}, ckpt)
    man, _ = prepare_corpus(tiny_corpus, str(tmp_path / "m"))
    assert (
        main(
            [
                "embed",
                "--manifest",
                man.utterances,
                "--out",
                str(tmp_path / "emb"),
                "--checkpoint",
                ckpt,
                "--json",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    e = json.loads(out[out.index("{") :])
    n = pq.read_table(man.utterances).num_rows
    assert e["rows"] == n
    emb = pq.read_table(str(tmp_path / "emb"))
    assert emb.num_rows == n and emb.schema.field("embedding").type.list_size == 8
    code = main(
        [
            "cluster",
            "--embeddings",
            str(tmp_path / "emb"),
            "--out",
            str(tmp_path / "lab"),
            "--k",
            "6",
            "--spherical",
            "--drop-fraction",
            "0.1",
            "--min-cluster-size",
            "2",
            "--manifest",
            man.utterances,
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    s = json.loads(out[out.index("{") :])
    assert s["embeddings"] == n and 0.5 < s["kept_share"] <= 1 - round(0.1 * n) / n + 1e-9
    assert {"all", "kept"} <= set(s["analysis"]) and 0 <= s["analysis"]["all"]["nmi"] <= 1
    assert (
        main(
            [
                "cluster",
                "--embeddings",
                str(tmp_path / "emb"),
                "--out",
                str(tmp_path / "x"),
                "--k",
                str(n + 1),
            ]
        )
        == 2
    )
    assert f"more than the {n} embeddings" in capsys.readouterr().err


def _blobs(n=4000, d=8, k=20, seed=0, spread=20.0):
    """Well-separated Gaussian blobs of equal expected size: ``(x (n, d), true labels (n,))``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * spread
    lab = rng.integers(0, k, n)
    return (centres[lab] + rng.standard_normal((n, d))).astype(np.float32), lab


def test_kmeans_plus_plus_is_seeded_and_spreads_over_blobs():
    x, lab = _blobs()
    a = kmeans.kmeans_plus_plus(x, 20, np.random.default_rng(5))
    b = kmeans.kmeans_plus_plus(x, 20, np.random.default_rng(5))
    assert a.shape == (20, 8) and a.dtype == np.float32 and np.array_equal(a, b)
    # D^2 sampling lands in (nearly) every blob; a random draw of 20 points misses ~7 of 20.
    hit = np.unique(lab[kmeans.assign(a, x)[0]])
    assert hit.size >= 18, hit.size
    with pytest.raises(ConfigError, match="k = 5"):
        kmeans.kmeans_plus_plus(x[:3], 5, np.random.default_rng(0))


def test_kmeanspp_init_beats_random_init_and_is_reproducible():
    from raysv.clustering.sharded import sharded_kmeans
    from raysv.clustering.shards import LocalShards

    x, _ = _blobs()
    held = LocalShards.from_arrays(np.arange(len(x)), x, shards=2)
    for seed in (1, 2, 3):
        runs = {
            init: sharded_kmeans(held, 20, KMeansSpec(iterations=2, seed=seed, init=init))
            for init in ("random", "kmeans++")
        }
        # history[0] is the objective of the initial centroids (0 iterations), [1] after 1.
        for it in (0, 1):
            pp = runs["kmeans++"].history[it]["objective"]
            rnd = runs["random"].history[it]["objective"]
            assert pp < rnd, (seed, it, pp, rnd)
    pp = KMeansSpec(iterations=2, init="kmeans++")
    again, first = sharded_kmeans(held, 20, pp), sharded_kmeans(held, 20, pp)
    assert np.array_equal(again.centroids, first.centroids)


def test_suggest_k_picks_the_bend_of_the_curve():
    ks = [5, 10, 20, 40, 80]
    assert kmeans.suggest_k(ks, [100.0, 60.0, 10.0, 9.0, 8.5]) == 20
    assert kmeans.suggest_k([10, 20], [5.0, 1.0]) is None  # too few points
    assert kmeans.suggest_k(ks, [10.0, 8.0, 6.0, 4.0, 2.0]) is None  # convex nowhere: no elbow
    with pytest.raises(ConfigError, match="3 values of k but 2 objectives"):
        kmeans.suggest_k([1, 2, 3], [1.0, 2.0])


def test_cli_elbow_finds_the_true_k_on_blobs(tmp_path, ray_local, capsys, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)  # MLflow's SQLite store keeps artifacts under ./mlruns

    from raysv.cli import main

    x, _ = _blobs(n=3000, k=12, seed=4)
    emb = _write_shards(x, str(tmp_path / "emb"))
    code = main(
        ["cluster", "--embeddings", emb, "--out", str(tmp_path / "el"), "--elbow"]
        + ["4,6,8,10,12,14,16,20,24,32", "--iterations", "10", "--json"]
    )
    out = capsys.readouterr().out
    assert code == 0
    s = json.loads(out[out.index("{") :])
    assert [r["k"] for r in s["elbow"]] == [4, 6, 8, 10, 12, 14, 16, 20, 24, 32]
    objs = [r["objective"] for r in s["elbow"]]
    assert objs[4] < 0.2 * objs[2]  # 12 blobs: k = 12 is far better than k = 8
    assert 10 <= s["suggested_k"] <= 14, s["suggested_k"]
    for name in ("_elbow.csv", "_elbow.json", "_elbow.png"):
        assert os.path.getsize(tmp_path / "el" / name) > 0
    assert (tmp_path / "el" / "_elbow.csv").read_text().splitlines()[0].startswith("k,objective")
    assert (
        main(
            [
                "cluster",
                "--embeddings",
                emb,
                "--out",
                str(tmp_path / "h"),
                "--elbow",
                "4,8,12,16",
                "--no-tracking",
            ]
        )
        == 0
    )
    assert "suggested k: 12" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["cluster", "--embeddings", emb, "--out", str(tmp_path / "h"), "--elbow", "4,x"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_device_assigner_matches_faiss_search_and_sums():
    """The GPU shards' torch search + sums (run here on the CPU device) agree with
    faiss's flat search and the CPU shards' partial sums."""
    x, _ = _skewed(n=5000, d=16, k=30, seed=3)
    c = x[np.random.default_rng(0).choice(len(x), 30, replace=False)] + 0.1
    lab, dist = kmeans.assign(x, c)
    sums, counts = kmeans.partial_stats(x, lab, 30)
    dev = kmeans.DeviceAssigner(x, "cpu", "torch", block=1024)  # several blocks
    d_sums, d_counts, d_obj = dev.stats(c)
    d_lab, d_dist = dev.final(c)
    # Ties aside, the same nearest centroid; distances to float32 rounding.
    assert (d_lab == lab).mean() > 0.999
    np.testing.assert_allclose(d_dist, dist, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(d_counts, counts)
    np.testing.assert_allclose(d_sums, sums, rtol=1e-5, atol=1e-3)
    assert d_obj == pytest.approx(float(dist.astype(np.float64).sum()), rel=1e-5)


def test_gpu_device_without_gpus_is_a_clear_error(tmp_path, ray_local):
    x, _ = _blobs(n=400, d=8, k=4)
    with pytest.raises(ConfigError, match="no GPUs"):
        cluster(_write_shards(x, str(tmp_path / "emb")), str(tmp_path / "out"), 4, device="gpu")
