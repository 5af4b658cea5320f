"""``raysv tune``: a real Ray Tune sweep of two Stage I trials on a local Ray."""

import os

import mlflow
import pytest

from raysv.cli import main
from raysv.config import from_dict
from raysv.errors import ConfigError
from raysv.tuning.sweep import SweepConfig, grid_points, run_sweep
from tests.conftest import cli_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "tune_smoke.yaml")


def test_sweep_runs_trials_picks_on_dev_and_reuses_finished_trials(
    tiny_corpus, tmp_path, ray_local, capsys, monkeypatch
):
    # Relative paths mean the folder the sweep is started from (trials run in their own).
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "sweep")
    data = os.path.relpath(tiny_corpus, tmp_path)
    argv = ["tune", "--config", SMOKE, "--data", data, "--out", "sweep", "--json"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Configuration for experiment" not in printed  # Ray Tune's tables go to stderr
    s = cli_json(printed)
    assert [r["params"] for r in s["trials"]] == [
        {"loss.rejection.threshold": 0.3},
        {"loss.rejection.threshold": 0.7},
    ]
    for r in s["trials"]:
        assert 0 <= r["dev_eer"] <= 100 and 0 <= r["test_eer"] <= 100
        assert os.path.isfile(r["best_model"])
    # Selection uses dev EER only.
    assert s["best"]["dev_eer"] == min(r["dev_eer"] for r in s["trials"])
    # Each trial trained with its own setting.
    for r in s["trials"]:
        cfg_path = os.path.join(out, "trials", f"{r['trial']:03d}", "config.yaml")
        with open(cfg_path) as f:
            assert f"threshold: {r['params']['loss.rejection.threshold']}" in f.read()
    # MLflow: one parent run, each trial nested under it.
    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    parent = s["mlflow"]["run_id"]
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'",
    )
    assert sorted(c.info.run_name for c in children) == ["trial000", "trial001"]
    assert len(client.get_metric_history(parent, "dev_eer")) == 2
    # A rerun reuses the finished trials (no retraining) and reports the same figures.
    assert main(argv) == 0
    again = cli_json(capsys.readouterr().out)
    assert [r["dev_eer"] for r in again["trials"]] == [r["dev_eer"] for r in s["trials"]]
    assert again["seconds"] < s["seconds"]


def test_bad_grid_key_fails_before_any_trial(tmp_path):
    cfg = from_dict(
        SweepConfig,
        {"out": str(tmp_path / "s"), "base": {"data": {"data": "x"}}, "grid": {"loss.nope": [1]}},
    )
    with pytest.raises(ConfigError, match=r"trial 0 .*loss\.nope"):
        run_sweep(cfg)
    assert not os.path.exists(tmp_path / "s" / "tune")


def test_grid_points_expand_repeats_with_seeds():
    cfg = from_dict(SweepConfig, {"grid": {"train.batch_size": [8, 16]}, "repeats": 2, "base": {}})
    assert grid_points(cfg) == [
        {"train.batch_size": 8, "train.seed": 0},
        {"train.batch_size": 8, "train.seed": 1},
        {"train.batch_size": 16, "train.seed": 0},
        {"train.batch_size": 16, "train.seed": 1},
    ]
    with pytest.raises(ConfigError, match="grid"):
        from_dict(SweepConfig, {"grid": {}})
