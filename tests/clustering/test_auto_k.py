"""Choosing k from the embeddings: real faiss k-means and silhouettes, real Ray for the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysv.cli import main
from raysv.clustering.auto_k import choose_k, k_grid
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
