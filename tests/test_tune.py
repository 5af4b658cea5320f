"""``raysv tune``: real Ray Tune sweeps of Stage I trials on a local Ray."""

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from raysv.cli import main
from raysv.config import from_dict, load_config
from raysv.errors import ConfigError
from raysv.training.config import PretrainConfig
from raysv.tuning.sweep import (
    TUNE_METRICS,
    SweepConfig,
    run_sweep,
    trial_config,
    trial_points,
    tune_metrics,
)
from tests.conftest import cli_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "tune_smoke.yaml")


def _tune_results(out: str) -> list[dict]:
    """Every result Ray Tune stored for the sweep's trials (their result.json lines)."""
    rows = []
    for path in glob.glob(os.path.join(out, "tune", "sweep", "*", "result.json")):
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def test_sweep_reports_every_epoch_never_a_test_figure_and_resumes(
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
    # Nothing of the sweep holds a CPU after it, even when its last trial was stopped.
    deadline = time.monotonic() + 20  # the node reports its free CPUs in a moment
    while ray_local.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_local.available_resources().get("CPU", 0) == 2
    s = cli_json(printed)
    cfg = load_config(SweepConfig, SMOKE)
    epochs = cfg.base["train"]["epochs"]
    assert [r["params"] for r in s["trials"]] == trial_points(cfg)
    assert sum(s["counts"].values()) == len(s["trials"]) == cfg.samples
    assert s["trials_at_once"] == 1  # 2 CPUs: a trial's worker takes one, its input the other
    assert s["counts"]["failed"] == 0 and s["counts"]["finished"] >= 1
    for r in s["trials"]:
        trial_dir = os.path.join(out, "trials", f"{r['trial']:03d}")
        # [3] every epoch reached Tune as it ended, the dev figures of that epoch
        assert [c["epochs"] for c in r["curve"]] == list(range(1, r["epochs"] + 1))
        assert 0 <= r["dev_eer"] <= 100
        if r["status"] == "finished":
            assert r["epochs"] == epochs and os.path.isfile(r["best_model"])
            assert 0 <= r["test_eer"] <= 100  # read from the trial's summary, not from Tune
        else:  # stopped by ASHA at a rung: it trained fewer epochs and has no summary
            assert r["status"] == "stopped" and r["epochs"] < epochs
            assert not os.path.exists(os.path.join(trial_dir, "summary.json"))
        with open(os.path.join(trial_dir, "config.yaml")) as f:  # each its own setting
            threshold = r["params"]["loss.rejection.threshold"]
            assert f"threshold: {threshold}" in f.read()
    # Test figures never reach Tune, from any trial, in any report.
    reported = _tune_results(out)
    assert len(reported) >= sum(r["epochs"] for r in s["trials"])
    assert not [k for m in reported for k in m if "test" in k.lower()]
    # [5] selection on dev EER among finished trials; its config runs as is.
    finished = [r for r in s["trials"] if r["status"] == "finished"]
    assert s["best"]["dev_eer"] == min(r["dev_eer"] for r in finished)
    best = load_config(PretrainConfig, s["best_config"])
    assert best.out == os.path.join(out, "best") and best.parent_run_id is None
    assert best.loss.rejection.threshold == s["best"]["params"]["loss.rejection.threshold"]
    # MLflow: one parent run, each trial nested under it with its per-epoch metrics.
    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    parent = s["mlflow"]["run_id"]
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'",
    )
    assert sorted(c.info.run_name for c in children) == [
        f"trial{r['trial']:03d}" for r in s["trials"]
    ]
    assert client.get_run(parent).data.metrics["trials.stopped"] == s["counts"]["stopped"]
    # the sweep report: in the folder and on the parent run
    assert s["report"] == os.path.join(out, "report", "report.html")
    with open(s["report"]) as f:
        assert f"best trial: #{s['best']['trial']}</b>" in f.read()
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {"report/report.html", "report/curves.png", "report/knobs.png"}
    # [4] Rerunning the same command resumes the sweep: nothing trains again, stopped
    # trials stay stopped, the figures are the same.
    stamps = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "trials", "*", "*"))}
    assert main(argv) == 0
    again = cli_json(capsys.readouterr().out)
    assert [(r["status"], r["dev_eer"]) for r in again["trials"]] == [
        (r["status"], r["dev_eer"]) for r in s["trials"]
    ]
    assert {p: os.path.getmtime(p) for p in stamps} == stamps
    assert again["seconds"] < s["seconds"]
    # Another sweep into the same folder is refused, not mixed with this one.
    argv_other = argv[:-1] + ["--set", "seed=9", "--json"]
    assert main(argv_other) == 2
    assert "holds a sweep of other trials" in capsys.readouterr().err


@pytest.mark.slow  # ~3 min on 2 cores: a sweep killed with SIGKILL mid-trial, then rerun
def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tiny_corpus, tmp_path):
    out = tmp_path / "sweep"
    argv = [
        sys.executable,
        "-m",
        "raysv.cli",
        "tune",
        "--config",
        SMOKE,
        "--data",
        tiny_corpus,
        "--out",
        str(out),
        "--set",
        "scheduler.name=none",
        "--set",
        "samples=2",
        "--set",
        "base.train.epochs=3",
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = out / "trials" / "000" / "summary.json"
    try:
        deadline = time.monotonic() + 600
        while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
        assert first.exists() and proc.poll() is None, "the first trial did not finish"
        time.sleep(5)  # into the second trial
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray, at once
        proc.wait()
    stamp = first.stat().st_mtime
    assert not (out / "summary.json").exists()
    # Ctrl-C (SIGINT to the driver) in the second trial: Ray Tune returns as if done; the
    # sweep says it was interrupted (exit 2, one line), summarises nothing, and resumes.
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def checkpoints():
        return set(glob.glob(str(out / "trials" / "001" / "ray" / "*" / "checkpoint_*")))

    before = checkpoints()
    try:  # once the resumed second trial has saved an epoch, it is training its next
        deadline = time.monotonic() + 300
        while checkpoints() == before and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, "the rerun ended before its second trial trained"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err[-2000:]
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            "the sweep was interrupted with 1 of 2 trial(s) unfinished; rerun the same command "
            "to resume it"
        )
    )
    assert not (out / "summary.json").exists()
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    s = cli_json(done.stdout)
    assert [r["status"] for r in s["trials"]] == ["finished", "finished"]
    assert first.stat().st_mtime == stamp  # the finished trial did not run again


@pytest.mark.slow  # ~2.5 min on 2 cores: three Stage I trials picked by Optuna, with ASHA
def test_an_optuna_sweep_runs_its_picks_and_resumes(tiny_corpus, tmp_path, ray_local, capsys):
    out = str(tmp_path / "sweep")
    argv = ["tune", "--config", SMOKE, "--data", tiny_corpus, "--out", out, "--json"]
    argv += ["--set", "search=optuna", "--set", "samples=3", "--set", "seed=5"]
    assert main(argv) == 0
    s = cli_json(capsys.readouterr().out)
    assert s["search"] == "optuna" and [r["trial"] for r in s["trials"]] == [0, 1, 2]
    assert s["counts"]["failed"] == 0 and s["counts"]["finished"] >= 1
    thresholds = [r["params"]["loss.rejection.threshold"] for r in s["trials"]]
    assert len(set(thresholds)) == 3 and all(0.2 <= t <= 0.8 for t in thresholds)
    for r in s["trials"]:  # each trial ran with the value Optuna picked for it
        with open(os.path.join(out, "trials", f"{r['trial']:03d}", "config.yaml")) as f:
            assert f"threshold: {r['params']['loss.rejection.threshold']}" in f.read()
    assert not [k for m in _tune_results(out) for k in m if "test" in k.lower()]
    best = load_config(PretrainConfig, s["best_config"])
    assert best.loss.rejection.threshold == s["best"]["params"]["loss.rejection.threshold"]
    # rerun: the sweep resumes, nothing is picked or trained again
    stamps = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "trials", "*", "*"))}
    assert main(argv) == 0
    again = cli_json(capsys.readouterr().out)
    assert [r["params"] for r in again["trials"]] == [r["params"] for r in s["trials"]]
    assert {p: os.path.getmtime(p) for p in stamps} == stamps


@pytest.mark.slow  # ~4 min on 2 cores: two one-round trials (embed, cluster, train, score)
def test_round_trials_sweep_purification_from_a_fixed_encoder(tiny_corpus, tmp_path, ray_local):
    """stage: round: each trial is one raysv iterate round from the same Stage I encoder,
    so purification's p (and k, S) are swept with tau; epochs reach Tune as in Stage II."""
    import yaml

    from raysv.pipeline.iterate import IterateConfig
    from tests.training.test_stage2 import tiny_encoder

    with open(os.path.join(ROOT, "configs", "iterate_smoke.yaml")) as f:
        base = yaml.safe_load(f)
    for key in ("out", "rounds", "final_clustering"):
        base.pop(key)
    base.update(data=tiny_corpus, init_checkpoint=tiny_encoder(str(tmp_path / "init.pt")))
    out = str(tmp_path / "sweep")
    cfg = from_dict(
        SweepConfig,
        {
            "out": out,
            "stage": "round",
            "base": base,
            "grid": {"schedule.drop_fraction": [0.0, 0.4], "schedule.tau": [2.5]},
        },
    )
    s = run_sweep(cfg)
    assert [r["status"] for r in s["trials"]] == ["finished", "finished"]
    epochs = base["train"]["train"]["epochs"]
    for r in s["trials"]:
        trial = os.path.join(out, "trials", f"{r['trial']:03d}")
        # one round of its own: clustered with its p, trained with its tau
        assert not os.path.exists(os.path.join(trial, "round2"))
        with open(os.path.join(trial, "round1", "labels", "_summary.json")) as f:
            assert json.load(f)["purification"]["p"] == r["params"]["schedule.drop_fraction"]
        with open(os.path.join(trial, "round1", "train", "config.yaml")) as f:
            assert "tau: 2.5" in f.read()
        assert [c["epochs"] for c in r["curve"]] == list(range(1, epochs + 1))
        assert 0 <= r["test_eer"] <= 100 and os.path.isfile(r["best_model"])
    assert not [k for m in _tune_results(out) for k in m if "test" in k.lower()]
    # kept shares differ: p was applied per trial
    kept = []
    for r in s["trials"]:
        with open(os.path.join(out, "trials", f"{r['trial']:03d}", "summary.json")) as f:
            kept.append(json.load(f)["rounds"][0]["kept_share"])
    assert kept[0] > kept[1]
    best = load_config(IterateConfig, s["best_config"])
    assert best.rounds == 1 and best.schedule.drop_fraction == [
        s["best"]["params"]["schedule.drop_fraction"]
    ]
    # MLflow: each trial's iterate run is nested under the sweep's
    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    parent = s["mlflow"]["run_id"]
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'",
    )
    assert sorted(c.info.run_name for c in children) == ["trial000", "trial001"]


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
    assert trial_points(cfg) == [
        {"train.batch_size": 8, "train.seed": 0},
        {"train.batch_size": 8, "train.seed": 1},
        {"train.batch_size": 16, "train.seed": 0},
        {"train.batch_size": 16, "train.seed": 1},
    ]
    with pytest.raises(ConfigError, match="nothing to sweep"):
        from_dict(SweepConfig, {"grid": {}})


# -- #22: search spaces, per-epoch reports to Tune, early stopping, resume ---------------


def _random_sweep(**extra):
    data = {
        "search": "random",
        "samples": 6,
        "seed": 3,
        "base": {},
        "grid": {"train.batch_size": [8, 16]},
        "space": {
            "loss.rejection.temperature": {"loguniform": [2.0, 15.0]},
            "loss.rejection.threshold": {"uniform": [0.2, 0.8]},
            "optim.decay_every": {"randint": [100, 200]},
            "loss.name": {"choice": ["ava", "aproto"]},
        },
    }
    data.update(extra)
    return from_dict(SweepConfig, data)


def test_random_search_draws_seeded_points_within_the_space_crossed_with_the_grid():
    cfg = _random_sweep()
    points = trial_points(cfg)
    assert len(points) == 6 * 2 and points == trial_points(_random_sweep())  # seeded
    assert points != trial_points(_random_sweep(seed=4))
    assert [p["train.batch_size"] for p in points[:4]] == [8, 16, 8, 16]
    assert points[0]["loss.rejection.threshold"] == points[1]["loss.rejection.threshold"]
    for p in points:
        assert 2.0 <= p["loss.rejection.temperature"] <= 15.0
        assert 0.2 <= p["loss.rejection.threshold"] <= 0.8
        assert isinstance(p["optim.decay_every"], int) and 100 <= p["optim.decay_every"] <= 200
        assert p["loss.name"] in ("ava", "aproto")
    temps = sorted(p["loss.rejection.temperature"] for p in points[::2])
    assert temps[-1] / temps[0] > 1.5  # spread over the range, not one value
    for i, p in enumerate(points):  # [1] every drawn trial is a valid stage config
        trial_config(cfg, i, p, None)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"a": {"normal": [0, 1]}}, "space.a: expected one of {choice: ..., uniform"),
        (
            {"a": {"uniform": [1, 1]}},
            r"space.a.uniform: expected \[low, high\] numbers with low < high",
        ),
        ({"a": {"uniform": [0, "x"]}}, "space.a.uniform: expected"),
        ({"a": {"loguniform": [0, 1]}}, "space.a.loguniform: low must be > 0, got 0"),
        ({"a": {"randint": [1, 2.5]}}, r"space.a.randint: expected integers"),
        ({"a": {"choice": []}}, "space.a.choice: expected a non-empty list"),
        ({"a": {"choice": [1], "uniform": [0, 1]}}, "space.a: expected one of"),
    ],
)
def test_a_bad_search_space_is_refused_when_read(space, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(SweepConfig, {"search": "random", "space": space})


def test_sweep_settings_that_cannot_work_together_are_refused():
    with pytest.raises(ConfigError, match="space is drawn from by search: random"):
        from_dict(SweepConfig, {"space": {"a": {"choice": [1]}}})
    with pytest.raises(ConfigError, match="a: in both grid and space"):
        from_dict(
            SweepConfig,
            {"search": "random", "grid": {"a": [1]}, "space": {"a": {"choice": [1]}}},
        )
    with pytest.raises(ConfigError, match="scheduler.reduction_factor must be > 1, got 1"):
        from_dict(SweepConfig, {"grid": {"a": [1]}, "scheduler": {"reduction_factor": 1}})
    with pytest.raises(ConfigError, match="scheduler.name: 'hyperband' is not one of"):
        from_dict(SweepConfig, {"grid": {"a": [1]}, "scheduler": {"name": "hyperband"}})


def test_optuna_search_picks_values_within_the_space_and_learns_from_results():
    """search: optuna hands the space to Optuna's TPE sampler through Ray Tune's
    OptunaSearch; every value it can propose is validated first (edge_points)."""
    from raysv.tuning.sweep import edge_points, optuna_searcher, startup_trials, tune_domain

    space = {
        "loss.rejection.temperature": {"loguniform": [2.0, 15.0]},
        "loss.rejection.threshold": {"uniform": [0.2, 0.8]},
        "optim.decay_every": {"randint": [100, 102]},
        "loss.name": {"choice": ["ava", "aproto"]},
    }
    cfg = from_dict(SweepConfig, {"search": "optuna", "samples": 4, "space": space})
    edges = edge_points(cfg.space)
    assert edges[0] == {
        "loss.rejection.temperature": 2.0,
        "loss.rejection.threshold": 0.2,
        "optim.decay_every": 100,
        "loss.name": "ava",
    }
    assert len(edges) == 1 + 4  # each key's other end / other choice once
    assert {p["optim.decay_every"] for p in edges} == {100, 102}
    for i, p in enumerate(edges):
        trial_config(cfg, i, p, None)
    bad = from_dict(
        SweepConfig, {"search": "optuna", "space": {"train.batch_size": {"randint": [0, 8]}}}
    )
    with pytest.raises(ConfigError, match="train.batch_size"):  # an end the stage refuses
        [trial_config(bad, i, p, None) for i, p in enumerate(edge_points(bad.space))]

    def picks(seed, n=12):
        sweep = from_dict(
            SweepConfig, {"search": "optuna", "samples": n, "seed": seed, "space": space}
        )
        searcher = optuna_searcher(
            sweep,
            space={"point": {k: tune_domain(d) for k, d in space.items()}},
            metric="best_dev_eer",
            mode="min",
        )
        out = []
        for t in range(n):
            point = searcher.suggest(f"t{t}")["point"]
            # a made-up objective: low thresholds are better
            searcher.on_trial_complete(
                f"t{t}", {"best_dev_eer": 10 + 40 * point["loss.rejection.threshold"]}
            )
            out.append(point)
        return out

    points = picks(0)
    assert points == picks(0) and points != picks(1)  # seeded
    for p in points:
        assert 2.0 <= p["loss.rejection.temperature"] <= 15.0
        assert 0.2 <= p["loss.rejection.threshold"] <= 0.8
        assert p["optim.decay_every"] in (100, 101, 102)  # both ends included
        assert p["loss.name"] in ("ava", "aproto")
    # TPE leans towards what scored well once its random startup picks (half the trials,
    # at most 10) are done
    assert (startup_trials(8), startup_trials(30), startup_trials(1)) == (4, 10, 1)
    later = [p["loss.rejection.threshold"] for p in picks(0, 16)[8:]]
    assert sum(later) / len(later) < 0.45


def test_an_optuna_search_takes_its_values_from_space_only():
    for bad in (
        {"search": "optuna", "grid": {"a": [1]}, "space": {"b": {"choice": [1]}}},
        {"search": "optuna", "grid": {"a": [1]}},
        {"search": "optuna", "space": {"b": {"choice": [1]}}, "repeats": 2},
    ):
        with pytest.raises(ConfigError, match="search: optuna picks every swept value"):
            from_dict(SweepConfig, bad)


def test_a_sweep_without_dev_trials_is_refused_before_anything_is_written(tmp_path, capsys):
    """Trials are stopped and ranked on dev EER only: no dev trials, no sweep."""
    corpus = tmp_path / "corpus"
    (corpus / "trials").mkdir(parents=True)
    (corpus / "trials" / "test.txt").write_text("")  # test trials never choose
    out = tmp_path / "sweep"
    argv = ["tune", "--config", SMOKE, "--data", str(corpus), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        f"trial 0: no dev trials to rank trials on: {corpus} has no trials/dev.txt (add "
        "one); test trials are never used to choose"
    )
    assert not out.exists()
    stage2 = tmp_path / "stage2.yaml"
    stage2.write_text(
        "stage: train\nbase: {data: {labels: l, utterances: u}}\ngrid: {gate.tau: [1.0, 2.0]}\n"
    )
    assert main(["tune", "--config", str(stage2), "--out", str(out)]) == 2
    assert "trial 0: no dev trials to rank trials on: give base.data.dev_trials;" in (
        capsys.readouterr().err
    )
    assert not out.exists()
    # a round trial's corpus is raysv iterate's data: --data lands there
    gate = os.path.join(ROOT, "configs", "tune_asha_gate.yaml")
    assert main(["tune", "--config", gate, "--data", str(corpus), "--out", str(out)]) == 2
    assert f"rank trials on: {corpus} has no trials/dev.txt (add one)" in capsys.readouterr().err
    assert not out.exists()
    # a round trial without a corpus names its own key
    stage_round = tmp_path / "round.yaml"
    stage_round.write_text("stage: round\nbase: {utterances: u}\ngrid: {schedule.tau: [1.0]}\n")
    assert main(["tune", "--config", str(stage_round), "--out", str(out)]) == 2
    assert "rank trials on: give base.dev_trials;" in capsys.readouterr().err
    # --data is not for a Stage II sweep on fixed pseudo labels
    assert main(["tune", "--config", str(stage2), "--data", str(corpus), "--out", str(out)]) == 2
    assert "--data: a Stage II sweep (stage: train) trains on fixed pseudo labels" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_trials_run_side_by_side_as_the_cluster_holds_them():
    from raysv.tuning.sweep import trials_at_once

    def trial(**train):
        return from_dict(PretrainConfig, {"train": {"batch_size": 8, **train}})

    # automatic CPU workers take all CPUs but one: one trial at a time, however large
    assert trials_at_once([trial()], cpus=2, gpus=0) == (1, {"CPU": 2, "GPU": 0})
    assert trials_at_once([trial(num_workers=2)], cpus=64, gpus=0)[0] == 1
    # given CPUs per worker: workers' CPUs + 1 for the input each
    assert trials_at_once([trial(num_workers=2, cpus_per_worker=3)], 64, 0) == (
        9,
        {"CPU": 7, "GPU": 0},
    )
    # GPU workers: one GPU each, 2 CPUs each when the cluster has them; the largest
    # trial of the sweep decides
    gpu = [trial(num_workers=2, use_gpu=True), trial(num_workers=4, use_gpu=True)]
    assert trials_at_once(gpu, cpus=64, gpus=8) == (2, {"CPU": 9, "GPU": 4})
    assert trials_at_once(gpu, cpus=64, gpus=2)[0] == 1  # never 0
    assert trials_at_once(gpu, cpus=12, gpus=8)[0] == 1  # CPUs bind first
    # a round trial embeds with every CPU first: one at a time
    from raysv.pipeline.iterate import IterateConfig

    rnd = from_dict(
        IterateConfig,
        {"train": {"train": {"batch_size": 8, "num_workers": 2, "cpus_per_worker": 3}}},
    )
    assert trials_at_once([rnd], cpus=64, gpus=0)[0] == 1


def test_an_optuna_trial_folder_of_other_values_is_moved_aside_not_resumed(tmp_path):
    """A resumed Optuna sweep may number a new pick like a trial whose Tune record was
    lost: that trial's folder is kept aside, never resumed with other values."""
    from raysv.tuning.sweep import _own_folder

    folder = tmp_path / "trials" / "003"
    _own_folder(str(folder), {"loss.rejection.threshold": 0.3})
    (folder / "summary.json").write_text("{}")
    _own_folder(str(folder), {"loss.rejection.threshold": 0.3})  # the same pick: kept
    assert (folder / "summary.json").exists()
    _own_folder(str(folder), {"loss.rejection.threshold": 0.6})
    aside = glob.glob(str(folder) + ".replaced-*")
    assert len(aside) == 1 and os.path.exists(os.path.join(aside[0], "summary.json"))
    assert os.listdir(folder) == [".point.json"]
    with open(folder / ".point.json") as f:
        assert json.load(f) == {"loss.rejection.threshold": 0.6}


def test_a_batch_size_sweep_scales_each_trials_learning_rate_by_the_rule():
    from raysv.tuning.sweep import scaled_lr

    assert scaled_lr(0.002, 128, 32, "linear") == 0.008
    assert scaled_lr(0.002, 128, 32, "sqrt") == 0.004
    assert scaled_lr(0.002, 8, 32, "sqrt") == 0.001
    assert scaled_lr(0.002, 128, 32, "none") == 0.002

    def lrs(rule, stage="pretrain", **base):
        cfg = from_dict(
            SweepConfig,
            {
                "stage": stage,
                "lr_rule": rule,
                "base": base,
                "grid": {
                    ("train.train.batch_size" if stage == "round" else "train.batch_size"): [
                        16,
                        32,
                        128,
                    ]
                },
            },
        )
        out = []
        for i, p in enumerate(trial_points(cfg)):
            c = trial_config(cfg, i, p, None)
            out.append(c.train.optim.lr if stage == "round" else c.optim.lr)
        return out

    base = {"train": {"batch_size": 32}, "optim": {"lr": 0.002}}
    assert lrs("none", **base) == [0.002, 0.002, 0.002]
    assert lrs("sqrt", **base) == [0.001414, 0.002, 0.004]
    assert lrs("linear", **base) == [0.001, 0.002, 0.008]
    # a round trial's Stage II run; the base batch from the stage's default (64)
    assert lrs("linear", stage="round", train={"optim": {"lr": 0.004}}) == [0.001, 0.002, 0.008]
    with pytest.raises(ConfigError, match="lr_rule: 'cosine' is not one of"):
        from_dict(SweepConfig, {"grid": {"a": [1]}, "lr_rule": "cosine"})


def test_only_dev_figures_of_an_epoch_reach_tune():
    rank0 = {
        "epoch": 2,
        "step": 40,
        "loss": 1.5,
        "dev_eer": 20.0,
        "best_dev_eer": 18.0,
        "dev_min_dcf_0.01": 0.9,
        "test_eer": 11.0,  # never computed per epoch today; never reported if it were
        "test.min_dcf": 0.5,
    }
    m = tune_metrics(rank0)
    assert tuple(m) == TUNE_METRICS
    assert m["epochs"] == 3 and m["best_dev_eer"] == 18.0 and m["final"] == 0
    assert not [k for k in m if "test" in k]


def test_trial_rows_tell_finished_stopped_and_failed_trials_apart(tmp_path):
    """A sweep's table from Ray Tune's results: a trial with a summary finished, one
    without was stopped after its last reported epoch; test figures come from the
    summary only."""
    import pandas as pd
    from ray.tune import Result

    from raysv.data.outputs import write_json_atomic
    from raysv.tuning.sweep import _trial_row

    points = [{"x": 1}, {"x": 2}, {"x": 3}]
    curve = pd.DataFrame({"epochs": [1, 2, 3], "dev_eer": [30.0, 25.0, 22.0], "final": [0, 0, 1]})
    (tmp_path / "000").mkdir()
    write_json_atomic(
        str(tmp_path / "000" / "summary.json"),
        {"final": {"best.test.eer": 12.5, "best.test.min_dcf_0.01": 0.7}, "best_model": "b.pt"},
    )
    finished = Result(
        metrics={"config": {"trial": 0}, "best_dev_eer": 22.0, "epochs": 3},
        checkpoint=None,
        error=None,
        path=str(tmp_path),
        metrics_dataframe=curve,
    )
    stopped = Result(
        metrics={"config": {"trial": 1}, "best_dev_eer": 41.0, "epochs": 1},
        checkpoint=None,
        error=None,
        path=str(tmp_path),
        metrics_dataframe=pd.DataFrame({"epochs": [1], "dev_eer": [41.0], "final": [0]}),
    )
    failed = Result(
        metrics={"config": {"trial": 2}},
        checkpoint=None,
        error=RuntimeError("Traceback ...\nraysv.errors.ConfigError: bad thing"),
        path=str(tmp_path),
    )
    rows = [_trial_row(r, points, str(tmp_path)) for r in (finished, stopped, failed)]
    assert rows[0]["status"] == "finished" and rows[0]["test_eer"] == 12.5
    assert rows[0]["curve"] == [
        {"epochs": 1, "dev_eer": 30.0},
        {"epochs": 2, "dev_eer": 25.0},
        {"epochs": 3, "dev_eer": 22.0},
    ]
    assert rows[0]["epochs"] == 3
    assert rows[0]["dev_eer"] == 22.0 and rows[0]["params"] == {"x": 1}
    assert rows[1]["status"] == "stopped" and rows[1]["epochs"] == 1
    assert "test_eer" not in rows[1]
    assert rows[2]["status"] == "failed" and rows[2]["error"].endswith("bad thing")
    # a run its objective ended early (DINO's collapse) is told apart from a stopped one
    (tmp_path / "001").mkdir()
    write_json_atomic(
        str(tmp_path / "001" / "summary.json"),
        {"stopped": "the teacher collapsed at epoch 2", "epochs": 2, "final": {}},
    )
    ended = _trial_row(stopped, points, str(tmp_path))
    assert ended["status"] == "ended_early" and ended["epochs"] == 2
    assert ended["reason"] == "the teacher collapsed at epoch 2"


def test_swept_values_keep_their_type_and_draws_stay_in_range(tmp_path):
    import numpy as np

    from raysv.tuning.sweep import absolute_paths, draw, with_values

    cfg = from_dict(
        SweepConfig,
        {"base": {"optim": {"decay": 0.9}}, "grid": {"optim.lr": [1e-05, 2e-4]}},
    )
    lrs = [trial_config(cfg, i, p, None).optim.lr for i, p in enumerate(trial_points(cfg))]
    assert lrs == [1e-05, 2e-4]  # 1e-05 as YAML text would be a string
    assert with_values({"a": {"b": 1}}, {"a.c": 2, "d.e": 3}) == {
        "a": {"b": 1, "c": 2},
        "d": {"e": 3},
    }
    rng = np.random.default_rng(0)
    tight = [draw({"uniform": [0.123451, 0.123456]}, rng) for _ in range(200)]
    assert all(0.123451 <= v <= 0.123456 for v in tight)  # rounding never leaves the range
    assert all(1 <= draw({"randint": [1, 3]}, rng) <= 3 for _ in range(50))
    assert {draw({"randint": [1, 3]}, rng) for _ in range(100)} == {1, 2, 3}  # both ends
    (tmp_path / "data").mkdir()
    got = absolute_paths({"data": {"data": "data", "mode": "dialogue"}}, str(tmp_path))
    assert got == {"data": {"data": str(tmp_path / "data"), "mode": "dialogue"}}
    with pytest.raises(ConfigError, match="train.seed is swept: repeats > 1"):
        from_dict(SweepConfig, {"grid": {"train.seed": [1, 2]}, "repeats": 2})


def test_worker_groups_of_killed_trials_are_freed_and_nothing_else(ray_local):
    """A trial killed by a scheduler leaves its Ray Train worker group's placement group
    reserved (Ray Train's cleaner needs the dashboard): the sweep frees this job's groups
    whose creating actor is dead, and no other."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from raysv.tuning.sweep import free_orphaned_worker_groups

    @ray.remote(num_cpus=0)
    class Creator:
        def make(self):
            pg = placement_group([{"CPU": 0.01}])
            ray.get(pg.ready())
            return pg.id.hex()

    dead, alive = Creator.remote(), Creator.remote()
    orphan = ray.get(dead.make.remote())
    kept = ray.get(alive.make.remote())
    own = placement_group([{"CPU": 0.01}])  # the driver's own: not an actor's
    ray.get(own.ready())
    ray.kill(dead)
    deadline, freed = time.monotonic() + 30, 0
    while not freed and time.monotonic() < deadline:  # the kill reaches the GCS in a moment
        freed = free_orphaned_worker_groups()
        time.sleep(0.5)
    assert freed == 1  # Ray itself had left it reserved
    states = placement_group_table()
    assert states[orphan]["state"] == "REMOVED"
    assert states[kept]["state"] == "CREATED" and states[own.id.hex()]["state"] == "CREATED"
    assert free_orphaned_worker_groups() == 0
    ray.util.remove_placement_group(own)
    from ray.util.placement_group import PlacementGroup

    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(kept))))
    ray.kill(alive)  # after its group is gone: nothing left reserved for the next tests


def test_controllers_left_after_a_sweep_are_killed_and_their_groups_freed(ray_local):
    """A sweep whose last trial a scheduler stopped returns before that trial's Ray Train
    controller is torn down: after the sweep, controllers that started during it and
    still live are killed and their worker groups freed; older ones are left alone."""
    import ray
    from ray.util.placement_group import placement_group_table

    from raysv.tuning.sweep import _job_actors, release_trials

    @ray.remote(num_cpus=0)
    class TrainController:  # the class name Ray Train's controller has
        def make(self):
            from ray.util.placement_group import placement_group

            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready())
            return pg.id.hex()

    older = TrainController.remote()
    ray.get(older.__ray_ready__.remote())
    before = set(_job_actors("TrainController"))
    left = TrainController.remote()
    group = ray.get(left.make.remote())
    cpus = ray.available_resources().get("CPU", 0)
    result = release_trials(before, grace_s=1.0)
    assert result["killed"] == 1 and result["freed"] == 1
    assert placement_group_table()[group]["state"] == "REMOVED"
    deadline = time.monotonic() + 20  # the node reports its free CPUs in a moment
    while ray.available_resources().get("CPU", 0) < cpus + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == cpus + 1
    states = _job_actors("TrainController")
    assert [states[a] for a in sorted(states) if a not in before] == ["DEAD"]
    assert ray.get(older.__ray_ready__.remote())  # the older one still answers
    ray.kill(older)


def test_a_runs_last_epoch_reaches_tune_only_after_its_summary(monkeypatch):
    """The epoch that ends a run (its last, or the one that spends ``train.max_minutes``)
    is not reported mid-run, where a scheduler could stop the trial during its final
    evaluation; the trial reports it once the summary is written."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysv.tuning.sweep import _epochs_to_tune

    sent = []
    monkeypatch.setattr(TuneReportCallback, "__init__", lambda self: None)  # no Tune session
    monkeypatch.setattr(
        TuneReportCallback, "after_report", lambda self, ctx, metrics, ckpt: sent.append(metrics)
    )
    cb = _epochs_to_tune(4)
    for epoch, spent in ((0, False), (1, False), (2, True)):  # the budget ends epoch 2
        cb.after_report(None, [{"epoch": epoch, "dev_eer": 30.0, "out_of_time": spent}], None)
    cb.after_report(None, [{"epoch": 3, "dev_eer": 30.0}], None)  # a last epoch
    assert [m[0]["epochs"] for m in sent] == [1, 2]
