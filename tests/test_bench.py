import json
import os

import numpy as np
import pytest

from raysv.cli import main
from tests.conftest import cli_json


def test_featurize_benchmark_quick(tmp_path, capsys):
    assert main(["bench", "featurize", "--quick", "--out", str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (
        s["raysv_utts_per_s"] > 0
        and s["bare_loop_utts_per_s"] > 0
        and s["ratio_raysv_over_bare"] > 0
    )
    assert s["raysv_peak_rss_mb"] > 10
    with open(os.path.join(tmp_path, "featurize_quick.json")) as f:
        saved = json.load(f)
    assert saved["utterances"] == s["utterances"] == 8


@pytest.mark.slow
def test_embed_benchmark_quick(tmp_path, capsys):
    """raysv embed vs a bare loop on the same checkpoint and utterances: same rows, same vectors."""
    assert main(["bench", "embed", "--quick", "--out", str(tmp_path), "--json"]) == 0
    s = cli_json(capsys.readouterr().out)
    assert s["utterances"] == 32 and s["rows_match"]
    assert s["max_abs_embedding_diff"] < 1e-4
    assert s["raysv_embed_utts_per_s"] > 0 and s["ratio_raysv_over_bare"] > 0
    assert os.path.isfile(os.path.join(tmp_path, "embed_quick.json"))


@pytest.mark.slow
def test_pretrain_benchmark_quick(tmp_path, capsys):
    """Ray Train vs the plain loops: wall and CPU ratios from the same repeat."""
    assert main(["bench", "pretrain", "--quick", "--out", str(tmp_path), "--json"]) == 0
    s = cli_json(capsys.readouterr().out)
    for name in (
        "overhead_ratio_1_worker",
        "overhead_ratio_cpu_1_worker",
        "overhead_ratio_1_worker_same_input",
        "overhead_ratio_cpu_1_worker_same_input",
    ):
        assert len(s[f"{name}_per_repeat"]) == s["repeats"] == 1 and s[name] > 0, name
    # one thread's CPU time in a step can't exceed its wall time
    assert 0 < s["workers1_step_cpu_s"] <= s["workers1_step_s"] + 1e-3
    assert 0 < s["plain_step_cpu_s"] <= s["plain_step_s"] + 1e-3
    assert s["workers2_samples_per_s"] > 0


def test_cluster_bench_sizes_are_parsed_and_checked():
    from raysv.bench.cluster import check_sizes, parse_sizes
    from raysv.errors import ConfigError

    assert parse_sizes("100k, 1M,10M") == [100_000, 1_000_000, 10_000_000]
    assert parse_sizes("2500,1.5k") == [2500, 1500] and parse_sizes("none") == []
    for bad in ("10x", "0", "1.5", "1,,2"):
        with pytest.raises(ConfigError, match="not a number of points"):
            parse_sizes(bad)
    assert check_sizes([10_000_000, 100_000, 1_000_000], 1_000_000, 1000) == [
        100_000,
        1_000_000,
        10_000_000,
    ]
    with pytest.raises(ConfigError, match="multiple of 1000000"):
        check_sizes([2_500_000], 1_000_000, 1000)
    with pytest.raises(ConfigError, match="fewer than k = 1000"):
        check_sizes([500], 1_000_000, 1000)


def test_bench_sizes_refused_before_any_work(tmp_path, capsys):
    """--sizes belongs to bench cluster, and sizes it can't make are refused in one line."""
    assert main(["bench", "featurize", "--sizes", "1k", "--out", str(tmp_path)]) == 2
    assert "--sizes is an option of raysv bench cluster only" in capsys.readouterr().err
    assert main(["bench", "cluster", "--quick", "--sizes", "75k", "--out", str(tmp_path)]) == 2
    assert "must be a multiple of 50000" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_cluster_bench_scaling_on_repeated_files(tmp_path):
    """The scaling runs: below the main N its first rows, at it the main pairs reused,
    above it its files repeated; there faiss.Kmeans (the whole matrix) and raysv's real
    cluster command (a fresh process with its own local Ray) ran on the same files,
    20 iterations each; faiss's objective over all points is one copy's times the
    copies. (The two objectives are not compared: at k = 10 one random start may
    land in a poor minimum, e.g. faiss's seed 1 here.)"""
    from raysv.bench import cluster as bench

    x = bench._data(2000, 8, 10)
    main_folder = bench._write(x, str(tmp_path / "emb"))
    data = bench._size_folders(x, {2000: main_folder}, [500, 2000, 6000], str(tmp_path))
    assert bench._read_into_one_array(data[500][0]).shape == (500, 8)
    folder, copies, how = data[6000]
    parts = sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))
    assert copies == 3 and len(parts) == 48 and how == "the main data's files 3 times"
    assert os.path.isfile(os.path.join(folder, "_SUCCESS"))
    six = bench._read_into_one_array(folder)
    assert six.shape == (6000, 8) and (six[4000:] == six[:2000]).all()
    del data[500]
    # the main comparison's pairs (made up here) are reused, not rerun
    main_pair = (
        [{"kmeans_s": 4.0, "load_s": 1.0, "total_s": 5.0, "driver_peak_mb": 200.0,
          "objective_all": 110.0, "iterations": 20}],
        [{"read_s": 0.1, "train_s": 2.0, "objective_all": 100.0, "iterations": 20}],
    )  # fmt: skip
    rows = bench._scaling(data, 8, 10, str(tmp_path), {main_folder: main_pair})
    assert [r["n"] for r in rows] == [2000, 6000]
    reused, repeated = rows
    assert reused["time_ratio_raysv_over_faiss"] == 2.0
    assert reused["time_ratio_excluding_shard_load"] == 1.5
    assert reused["objective_ratio_raysv_over_faiss"] == 1.1
    assert "raysv_error" not in repeated and "faiss_skipped" not in repeated, repeated
    assert repeated["iterations_faiss_raysv"] == [20, 20]
    assert repeated["faiss_train_s"] > 0 and repeated["raysv_kmeans_s"] > 0
    # the ratio is of the unrounded times; the times are shown to 1 ms (faiss may train
    # these 6000 rows in ~10 ms, where 1 ms of rounding is 5 %): equal within rounding
    k, f, half = repeated["raysv_kmeans_s"], repeated["faiss_train_s"], 0.0005
    low, high = (k - half) / (f + half), (k + half) / max(f - half, 1e-9)
    assert low * 0.999 <= repeated["time_ratio_raysv_over_faiss"] <= high * 1.001, repeated
    assert repeated["objective_ratio_raysv_over_faiss"] > 0  # each side's own seed-1 minimum
    # faiss's objective over repeated rows: one copy's times the copies, as over all rows
    over_all, from_one_copy = (bench._faiss(folder, 8, 10, 1, c)["objective_all"] for c in (1, 3))
    assert from_one_copy == pytest.approx(over_all, rel=1e-5)
    assert not os.path.exists(tmp_path / "out_6000")  # raysv's output removed after


def test_cluster_bench_same_start_compares_the_algorithms(tmp_path):
    """The same-start comparison: faiss.Kmeans's own initial centroids, then the same
    iterations on every point on both sides (raysv's real cluster command in a fresh
    process): equal objectives, where independent starts land in different minima."""
    from raysv.bench import cluster as bench

    x = bench._data(4000, 8, 10)
    folder = bench._write(x, str(tmp_path / "emb"))
    faiss_side = bench._faiss_same_start(folder, 8, 10, 3, str(tmp_path / "start.npy"))
    start = np.load(faiss_side["start"])
    assert start.shape == (10, 8)
    # the start is faiss's pick of rows of the data (before any iteration)
    assert all((np.abs(x - c).max(axis=1) == 0).any() for c in start)
    ours = bench._ours(folder, str(tmp_path / "out"), 10, seed=3, initial=faiss_side["start"])
    assert ours["iterations"] == bench.SAME_START_ITERATIONS
    # the first assignment is from the same centroids on both sides: the same objective
    # (faiss adds it up in float32); every later one too where no cluster was split
    assert faiss_side["history_splits"] == ours["history_splits"] == [0] * 5
    assert ours["history_objective"] == pytest.approx(faiss_side["history_objective"], rel=1e-5)
    assert ours["objective_all"] == pytest.approx(faiss_side["objective_all"], rel=1e-5)


def test_cluster_bench_objective_seeds_are_the_commands_results(tmp_path):
    """The extra objective seeds run raysv in this process on the files split as the
    command splits them: seed 1 gives the real command's objective (a fresh process,
    Ray shard actors), and each seed its own faiss.Kmeans start."""
    from raysv.bench import cluster as bench

    x = bench._data(4000, 8, 10)
    folder = bench._write(x, str(tmp_path / "emb"))
    command = bench._ours(folder, str(tmp_path / "out"), 10, seed=1)
    rows = bench._objective_seeds(folder, 8, 10, [1, 2], command["shards"])
    assert [r["seed"] for r in rows] == [1, 2]
    assert rows[0]["raysv"] == pytest.approx(command["objective_all"], rel=1e-6)
    # faiss's side: that seed's own run (seed 1 here is faiss.Kmeans's seed-1 objective)
    assert rows[0]["faiss"] == pytest.approx(bench._faiss(folder, 8, 10, 1)["objective_all"])


def test_cluster_bench_same_sample_isolates_the_split_rule():
    """Same sample, same start, 20 iterations on the sample (what the command runs):
    where neither side splits an empty cluster the two end on the same centroids (equal
    objectives over all points); the sample and start are rows of the data."""
    from raysv.bench import cluster as bench

    x = bench._data(20000, 16, 10)
    rows = bench.same_sample_objectives(x, 10, [1, 2, 3, 4, 5])
    assert [r["seed"] for r in rows] == [1, 2, 3, 4, 5]
    quiet = [r for r in rows if r["faiss_splits"] == r["raysv_splits"] == 0]
    assert len(quiet) >= 3, rows  # blobs far apart: a start rarely empties a cluster
    for r in quiet:
        assert r["raysv"] == pytest.approx(r["faiss"], rel=1e-6), r
    # the first split comes at the same iteration on both sides (the same assignments
    # up to it): a seed splits on one side only if it splits on the other
    assert all((r["faiss_splits"] > 0) == (r["raysv_splits"] > 0) for r in rows)


def test_stage1_bench_sets_up_each_objective_on_the_demos_encoder_and_batch():
    """Each objective of ``raysv bench stage1`` is a valid Stage I config that differs from
    the demo's only in its data mode, loss and DINO's teacher momentum; the epochs fit
    the budget with 20 % to spare, so that the budget ends the run."""
    from dataclasses import replace

    from raysv.bench.stage1 import METHODS, epochs_for, method_config
    from raysv.pipeline.demo import DemoConfig

    base = DemoConfig().pretrain
    seen = {}
    for name in METHODS:
        cfg = method_config(base, name)
        seen[name] = (cfg.data.mode, cfg.loss.name, cfg.rejection_active)
        same = replace(cfg, run_name=base.run_name, data=base.data, loss=base.loss, dino=base.dino)
        assert same == base, name  # encoder, batch, optimiser, epochs: the demo's
        assert cfg.dino.teacher_momentum == 0.99
    assert seen == {
        "ava_rejection": ("dialogue", "ava", True),
        "simclr": ("utterance", "ntxent", False),
        "dino": ("utterance", "dino", False),
        "dino_dialogue": ("dialogue", "dino", True),
    }
    with pytest.raises(ValueError, match="unknown Stage I method 'byol'"):
        method_config(base, "byol")
    assert epochs_for(3, 10.0) == 22 and epochs_for(3, 180.0) == 2 and epochs_for(3, 1e4) == 1


def test_the_unpaired_objective_ratio_and_its_interval(monkeypatch):
    """Objectives of independent seeded starts compared as two samples: the ratio of
    medians and of means, with intervals as wide as the delta method says a 95 %
    interval is, that hold the ratio, narrow as the samples grow, and do not depend on
    the order (the pairing) of either side."""
    from raysv.bench.cluster import unpaired_ratio

    rng = np.random.default_rng(1)
    theirs = 100 * (1 + 0.03 * rng.standard_normal(30))
    ours = 102 * (1 + 0.03 * rng.standard_normal(30))
    r = unpaired_ratio(list(ours), list(theirs))
    assert r["median_ratio"] == pytest.approx(np.median(ours) / np.median(theirs), abs=1e-4)
    assert r["mean_ratio"] == pytest.approx(ours.mean() / theirs.mean(), abs=1e-4)
    # the ratio of means' standard error (delta method): its 95 % interval is 2 x 1.96 of it
    se = r["mean_ratio"] * np.hypot(
        ours.std(ddof=1) / np.sqrt(30) / ours.mean(),
        theirs.std(ddof=1) / np.sqrt(30) / theirs.mean(),
    )
    lo, hi = r["mean_ratio_95"]
    assert lo < r["mean_ratio"] < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    lo, hi = r["median_ratio_95"]  # a median is about 1.25 x noisier than a mean
    assert lo < r["median_ratio"] < hi and hi - lo == pytest.approx(2 * 1.96 * 1.25 * se, rel=0.35)
    assert r["seeds"] == [30, 30]
    assert unpaired_ratio(list(ours[::-1]), list(theirs)) == r  # no pairing
    more = unpaired_ratio(
        list(102 * (1 + 0.03 * rng.standard_normal(300))),
        list(100 * (1 + 0.03 * rng.standard_normal(300))),
    )
    width = lambda v: v["mean_ratio_95"][1] - v["mean_ratio_95"][0]  # noqa: E731
    assert width(more) < width(r) / 2 and more["mean_ratio_95"][0] > 1.0
    with pytest.raises(ValueError, match="two or more"):
        unpaired_ratio([1.0], [1.0, 2.0])


def test_the_cluster_bench_seed_count_is_checked(monkeypatch):
    from raysv.bench.cluster import OBJECTIVE_SEEDS, objective_seeds
    from raysv.errors import ConfigError

    monkeypatch.delenv("RAYSV_BENCH_CLUSTER_SEEDS", raising=False)
    assert objective_seeds() == OBJECTIVE_SEEDS
    monkeypatch.setenv("RAYSV_BENCH_CLUSTER_SEEDS", "40")
    assert objective_seeds() == 40
    for bad in ("x", "2.5", "1", "\u00b2", "-3"):
        monkeypatch.setenv("RAYSV_BENCH_CLUSTER_SEEDS", bad)
        with pytest.raises(ConfigError, match="RAYSV_BENCH_CLUSTER_SEEDS"):
            objective_seeds()


def test_raysv_and_faiss_starts_cover_as_many_blobs(tmp_path):
    """The draws alone (issue #19): over 300 seeds, raysv's initial centroids (its
    training sample, then k rows of it, over two shards) fall in as many of the k blobs
    as faiss.Kmeans's own pick does, and both as many as a uniform draw of k rows."""
    from raysv.bench import cluster as bench

    d, k = 16, 50
    folder = bench._write(bench._data(20_000, d, k), str(tmp_path / "emb"))
    rows = bench.init_coverage(folder, d, k, list(range(1, 301)))
    s = bench.coverage_summary(rows, k)
    assert s["seeds"] == 300 and s["difference_se"] > 0
    assert abs(s["difference"]) < 3 * s["difference_se"]
    # about 20 000 / 50 rows a blob: near the equal-blob expectation, 31.8 of 50
    for side in ("faiss", "raysv"):
        assert abs(s[f"{side}_mean"] - s["uniform_expectation"]) < 3 * s[f"{side}_sd"] / np.sqrt(
            300
        )
