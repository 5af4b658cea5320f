"""Choosing k from the embeddings: real faiss k-means and silhouettes, real Ray for the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysv.cli import main
from raysv.clustering.auto_k import (
    average_linkage,
    choose_k,
    choose_k_by_merging,
    groups_at,
    k_grid,
    merge_threshold,
)
from raysv.errors import ConfigError
from tests.clustering.test_kmeans import _write_shards


def _speakers(n_spk: int, per: int, d: int = 32, noise: float = 0.35, seed: int = 0):
    """Unit-norm 'utterance embeddings' around ``n_spk`` random directions: ``(x (N, d), labels)``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_spk, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    lab = np.repeat(np.arange(n_spk), per)
    x = centres[lab] + noise * rng.standard_normal((lab.size, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), lab


@pytest.mark.parametrize("n_spk", [6, 25, 60])
def test_the_true_speaker_count_wins_on_a_grid_that_holds_it(n_spk):
    x, _ = _speakers(n_spk, per=12, seed=n_spk)
    ks = sorted({max(2, n_spk // 3), n_spk // 2, n_spk, 2 * n_spk, 3 * n_spk})
    res = choose_k(x, ks)
    assert res["k"] == n_spk, res["table"]
    assert [r["k"] for r in res["table"]] == ks
    assert all(-1 <= r["silhouette"] <= 1 for r in res["table"])


def test_the_default_grid_lands_near_the_speaker_count():
    x, _ = _speakers(40, per=12, seed=3)
    res = choose_k(x)
    grid = [r["k"] for r in res["table"]]
    assert grid == k_grid(len(x))
    # The grid's neighbours of 40 are within a factor 1.35 of it.
    assert 40 / 1.4 <= res["k"] <= 40 * 1.4, res["table"]


def test_grid_edges_and_errors():
    assert k_grid(480)[0] == 2 and k_grid(480)[-1] == 96 and len(k_grid(480)) >= 12
    assert k_grid(8000)[:2] == [2, 3]  # a big corpus can still have few speakers
    assert k_grid(15) == [2, 3]
    with pytest.raises(ConfigError, match="too few to choose k"):
        k_grid(10)
    x, _ = _speakers(4, per=5)
    x[3, 0] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        choose_k(x, [2, 3])
    with pytest.raises(ConfigError, match="does not fit"):
        choose_k(_speakers(4, per=5)[0], [2, 15])


def test_sampling_is_seeded():
    x, _ = _speakers(10, per=40, seed=1)
    a = choose_k(x, [5, 10, 20], seed=4, sample=150)
    b = choose_k(x, [5, 10, 20], seed=4, sample=150)
    assert a == b and a["sample"] == 150


def test_cluster_k_auto_cli(tmp_path, ray_local, capsys):
    x, lab = _speakers(12, per=15, seed=5)
    emb = _write_shards(x, str(tmp_path / "emb"), parts=2)
    out = tmp_path / "labels"
    args = ["cluster", "--embeddings", emb, "--out", str(out), "--k", "auto", "--no-tracking"]
    assert main([*args, "--json"]) == 0
    stdout = capsys.readouterr().out
    s = json.loads(stdout[stdout.index("{") :])
    assert s["k"] == s["auto_k"]["k"]
    assert 8 <= s["k"] <= 18, s["auto_k"]["table"]
    evidence = json.loads((out / "_auto_k.json").read_text())
    assert evidence["k"] == s["k"] and (out / "_auto_k.png").read_bytes()[:4] == b"\x89PNG"
    assert pq.read_table(str(out)).num_rows == len(lab)
    # Human output names the choice; a bad --k is one line.
    assert main(args) == 0
    assert f"k = {s['k']} chosen from the embeddings" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["cluster", "--embeddings", emb, "--out", str(out), "--k", "lots"])
    assert "expected a number of clusters or auto" in capsys.readouterr().err


# ---------------------------------------------------------------- the merging rule
def _dev_threshold(x: np.ndarray, lab: np.ndarray, seed: int = 0) -> float:
    """The merge threshold from 'dev trials' drawn from other speakers of the same kind."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(x), (2, 4000))
    return merge_threshold(np.einsum("nd,nd->n", x[a], x[b]), (lab[a] == lab[b]).astype(int))


def test_average_linkage_is_scipys_on_points():
    from scipy.cluster.hierarchy import fcluster, linkage

    x, _ = _speakers(30, per=8, noise=1.0, seed=2)
    x = x.astype(np.float64)
    merges = average_linkage(x, np.ones(len(x)))
    z = linkage(x, method="average", metric="cosine")
    assert np.allclose(np.sort(1 - z[:, 2]), np.sort(merges[:, 2]), atol=1e-5)
    for t in (0.2, 0.4, 0.6):  # the same partition at every cut
        ours = np.sort(groups_at(merges, np.ones(len(x)), t)).astype(int)
        theirs = np.sort(np.bincount(fcluster(z, 1 - t, criterion="distance"))[1:])
        assert np.array_equal(ours, theirs), t


def test_groups_weigh_by_their_members():
    # Two groups of 10 identical points each and a lone point near the first: the
    # lone point joins the first group (mean similarity 0.99), then everything merges.
    e = np.eye(3)
    near = np.array([0.99, np.sqrt(1 - 0.99**2), 0.0])
    sums = np.stack([10 * e[0], 10 * e[1], near])
    merges = average_linkage(sums, np.array([10, 10, 1]))
    assert merges[0, :2].tolist() in ([0, 2], [2, 0]) and merges[0, 2] == pytest.approx(0.99)
    # the union's mean similarity to group 1: (0 * 10 + 0.141 * 1) / 11 per pair
    assert merges[1, 2] == pytest.approx(np.sqrt(1 - 0.99**2) / 11, rel=1e-4)
    assert sorted(groups_at(merges, np.array([10, 10, 1]), 0.5)) == [10, 11]


@pytest.mark.parametrize("n_spk", [6, 25, 60])
def test_merging_finds_the_speaker_count(n_spk):
    x, lab = _speakers(n_spk, per=12, seed=n_spk)
    res = choose_k_by_merging(x, _dev_threshold(x, lab))
    assert res["method"] == "merge" and res["k"] == n_spk, res["table"]
    # weak embeddings (3x the noise): never fewer groups than speakers, at most 1.5x
    x, lab = _speakers(n_spk, per=12, noise=1.0, seed=n_spk)
    res = choose_k_by_merging(x, _dev_threshold(x, lab))
    assert n_spk <= res["k"] <= 1.5 * n_spk, res["table"]
    groups = [r["groups"] for r in res["table"]]
    assert groups == sorted(groups)  # stricter thresholds never give fewer groups


def test_merging_over_micro_clusters_on_a_bigger_sample():
    x, lab = _speakers(150, per=40, seed=7)  # 6000 points > nodes
    res = choose_k_by_merging(x, _dev_threshold(x, lab), nodes=1500)
    assert res["nodes"] == 1500 and res["sample"] == 6000
    assert 135 <= res["k"] <= 165, res["table"]


def test_merging_errors():
    x, lab = _speakers(4, per=5)
    with pytest.raises(ConfigError, match="cosine similarity in"):
        choose_k_by_merging(x, 1.5)
    with pytest.raises(ConfigError, match="too few to cluster; give k"):
        choose_k_by_merging(x, -1.0)  # everything merges into one group
    with pytest.raises(ConfigError, match="must be in"):
        merge_threshold(np.zeros(3), np.array([0, 1, 0]), 1.2)
    with pytest.raises(ConfigError, match="need target and non-target"):
        merge_threshold(np.zeros(3), np.ones(3))
    non, tar = np.arange(101.0) / 100, np.array([0.2, 0.4])
    both = lambda t: (np.r_[non, t], np.r_[np.zeros(101), np.ones(len(t))])  # noqa: E731
    # weak: the mean target score (0.3) is below the 10 % false-accept score (0.9)
    assert merge_threshold(*both(tar), 0.1) == pytest.approx(0.9)
    # strong: targets at 1.5 on average; halfway from 0.9 up to them
    assert merge_threshold(*both(tar + 1.2), 0.1) == pytest.approx(1.2)


def test_cluster_k_auto_cli_with_a_merge_threshold(tmp_path, ray_local, capsys):
    x, lab = _speakers(12, per=15, seed=5)
    emb = _write_shards(x, str(tmp_path / "emb"), parts=2)
    out = tmp_path / "labels"
    t = _dev_threshold(x, lab)
    args = ["cluster", "--embeddings", emb, "--out", str(out), "--k", "auto"]
    assert main([*args, "--merge-threshold", str(t), "--no-tracking", "--json"]) == 0
    stdout = capsys.readouterr().out
    s = json.loads(stdout[stdout.index("{") :])
    assert s["auto_k"]["method"] == "merge" and s["k"] == 12, s["auto_k"]["table"]
    assert json.loads((out / "_auto_k.json").read_text())["threshold"] == pytest.approx(t)


def test_cluster_k_auto_falls_back_when_merging_leaves_one_group(tmp_path, ray_local, capsys):
    x, _ = _speakers(12, per=15, seed=5)
    emb = _write_shards(x, str(tmp_path / "emb"), parts=2)
    out = tmp_path / "labels"
    args = ["cluster", "--embeddings", emb, "--out", str(out), "--k", "auto", "--no-tracking"]
    assert main([*args, "--merge-threshold", "-1", "--json"]) == 0
    stdout = capsys.readouterr().out
    s = json.loads(stdout[stdout.index("{") :])
    assert s["auto_k"]["method"] == "silhouette" and s["k"] >= 2
    assert "left 1 group(s)" in s["auto_k"]["fallback_from_merging"]
