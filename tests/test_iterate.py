"""``raysv iterate``: two Stage II rounds end to end, MLflow nesting, and a kill in round 2."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raysv.cli import main
from raysv.config import load_config
from raysv.data.corpus import prepare_corpus
from raysv.errors import ConfigError, ManifestError
from raysv.pipeline.iterate import IterateConfig, Schedule, run_iterate, split_manifest
from tests.conftest import cli_json
from tests.training.test_stage2 import tiny_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "iterate_smoke.yaml")

# What a finished two-round run leaves behind (relative to its folder).
ARTIFACTS = [
    "summary.json",
    "inputs/pool.parquet",
    "inputs/eval.parquet",
    "final_labels/_summary.json",
    *[f"round{r}/embeddings/{p}/_SUCCESS" for r in (0, 1, 2) for p in ("pool", "eval")],
    *[f"round{r}/embeddings/_scores.json" for r in (0, 1, 2)],
    *[f"round{r}/labels/_summary.json" for r in (1, 2)],
    *[f"round{r}/train/{f}" for r in (1, 2) for f in ("summary.json", "best_model.pt")],
]


def _argv(corpus, init, out):
    return ["iterate", "--config", SMOKE, "--data", corpus, "--init", init, "--out", out]


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory):
    return tiny_encoder(str(tmp_path_factory.mktemp("it") / "init.pt"))


@pytest.fixture(scope="module")
def full_run(tiny_corpus, init_ckpt, tmp_path_factory, ray_local):
    """The smoke config with round 1's k chosen from the data (round 2: k = 6)."""
    out = str(tmp_path_factory.mktemp("it") / "full")
    import io
    from contextlib import redirect_stdout

    cfg = Path(out).parent / "auto_then_6.yaml"
    cfg.write_text(Path(SMOKE).read_text().replace("k: [6]", "k: [auto, 6]"))
    buf = io.StringIO()
    with redirect_stdout(buf):
        argv = _argv(tiny_corpus, init_ckpt, out)
        argv[argv.index(SMOKE)] = str(cfg)
        code = main([*argv, "--json"])
    assert code == 0
    return out, cli_json(buf.getvalue())


def test_two_rounds_report_eer_nmi_and_gate_per_round(full_run):
    out, s = full_run
    assert [r["round"] for r in s["rounds"]] == [1, 2]
    for r in s["rounds"]:
        for key in (
            "test.eer",
            "dev.eer",
            "all.nmi",
            "kept_share",
            "clusters",
            "gate.gate_pass_share",
            "train.best_epoch",
            "train.init_dev_eer",
            "train.best_epoch_dev_eer",
            "purification.p",
            "purification.S",
        ):
            assert key in r, key
        assert 0 < r["kept_share"] <= 1 and r["clusters"] >= 2
        assert r["train.best_epoch"] >= -1 and r["train.best_epoch"] < r["train_epochs"]
    assert s["rounds"][1]["gate.gate_tau"] == 4.0  # the schedule's tau for round 2
    # Round 1's k came from merging down to the dev trials' threshold; round 2's was given.
    r1, r2 = s["rounds"]
    assert r1["k_auto"] and not r2["k_auto"] and r2["k"] == 6
    auto = json.loads(Path(out, "round1/labels/_auto_k.json").read_text())
    dev = json.loads(Path(out, "round0/embeddings/_scores.json").read_text())["dev"]
    assert auto["k"] == r1["k"] >= 2 and dev["merge_false_accepts"] == 0.02
    assert auto["source"]["threshold"] == dev["merge_threshold"]
    # (the tiny untrained encoder may map all utterances alike: then the silhouette decides)
    assert auto["method"] == "merge" or "fallback_from_merging" in auto
    assert "test" in s["initial"] and "nmi" in s["final_clustering"]["analysis"]["all"]
    for rel in ARTIFACTS:
        assert os.path.isfile(os.path.join(out, rel)), rel
    # Round 2 starts from round 1's encoder; its labels come from round 1's embeddings.
    r2 = json.loads(Path(out, "round2/train/summary.json").read_text())
    assert r2["n_classes"] >= 2
    cfg = Path(out, "round2/train/config.yaml").read_text()
    assert os.path.join(out, "round1/train/best_model.pt") in cfg
    # Trial utterances are never clustered or trained on.
    pool = set(pq.read_table(os.path.join(out, "inputs/pool.parquet"))["utt_id"].to_pylist())
    evald = set(pq.read_table(os.path.join(out, "inputs/eval.parquet"))["utt_id"].to_pylist())
    labelled = set(pq.read_table(os.path.join(out, "round1/labels"))["utt_id"].to_pylist())
    assert labelled == pool and not (pool & evald)
    # The scoring centre that selects each round's model: training rows only (#24), and
    # the round's scores say how many pool embeddings their centre averaged.
    for r in ("round1", "round2"):
        centre = pq.read_table(os.path.join(out, r, "train/inputs/centre_utts.parquet"))
        ids = set(centre["utt_id"].to_pylist())
        assert ids and ids <= labelled and not (ids & evald), r
    scores = json.loads(Path(out, "round1/embeddings/_scores.json").read_text())
    assert scores["dev"]["centre_rows"] == scores["test"]["centre_rows"] == len(pool)


def test_mlflow_has_a_parent_run_and_a_nested_run_per_round(full_run):
    _, s = full_run
    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    parent = client.get_run(s["mlflow"]["run_id"])
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "test.eer")] == [0, 1, 2]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == ["round1", "round2"]
    for c in children:
        assert {"test.eer", "all.nmi", "kept_share", "clusters", "loss"} <= set(c.data.metrics)
        plots = {a.path for a in client.list_artifacts(c.info.run_id, "clustering")}
        assert {"clustering/_sizes.png", "clustering/_objective.png"} <= plots
    # the evidence for round 1's k: k per merge threshold (or the silhouette per k)
    merged = "fallback_from_merging" not in json.loads(
        Path(s["rounds"][0]["labels"], "_auto_k.json").read_text()
    )
    hist = client.get_metric_history(
        parent.info.run_id, "round1.auto_k." + ("k" if merged else "silhouette")
    )
    # (the merge grid is threshold +- 0.2 in 17 steps, clipped at cosine 1)
    assert len(hist) >= 5
    assert not merged or s["rounds"][0]["k"] in {m.value for m in hist}


def test_a_rerun_of_a_finished_pipeline_redoes_nothing(full_run, tiny_corpus, init_ckpt):
    out, s = full_run
    # Every stage output is reused (the pool/eval split is cheap and rewritten).
    reused = [p for p in ARTIFACTS if p != "summary.json" and not p.startswith("inputs/")]
    before = {p: os.path.getmtime(os.path.join(out, p)) for p in reused}
    again = run_iterate(
        IterateConfig(
            out=out, data=tiny_corpus, init_checkpoint=init_ckpt, rounds=2, **_smoke_overrides()
        )
    )
    assert [r["test.eer"] for r in again["rounds"]] == [r["test.eer"] for r in s["rounds"]]
    assert before == {p: os.path.getmtime(os.path.join(out, p)) for p in before}


def _smoke_overrides() -> dict:
    from raysv.config import load_config

    cfg = load_config(IterateConfig, SMOKE)
    return {"schedule": cfg.schedule, "cluster": cfg.cluster, "train": cfg.train}


def test_killed_in_round_two_resumes_and_ends_like_an_uninterrupted_run(
    tiny_corpus, init_ckpt, tmp_path, full_run
):
    # Start from a copy of the uninterrupted run up to round 2's labels, so the
    # killed process goes straight to round 2's training (rounds 0-1 are what a
    # resume must skip; copy2 keeps their mtimes).
    out = str(tmp_path / "killed")
    shutil.copytree(full_run[0], out)
    for rel in ("round2/train", "round2/embeddings", "final_labels", "report"):
        shutil.rmtree(os.path.join(out, rel), ignore_errors=rel == "report")  # report: if made
    os.remove(os.path.join(out, "summary.json"))
    done = [p for p in ARTIFACTS if p.startswith(("round0", "round1", "round2/labels"))]
    before = {p: os.path.getmtime(os.path.join(out, p)) for p in done}
    cmd = [sys.executable, "-m", "raysv.cli", *_argv(tiny_corpus, init_ckpt, out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    pattern = os.path.join(out, "round2", "train", "ray", "round2", "checkpoint_*")
    id_file = os.path.join(out, "round2", "train", "mlflow_run_id")
    deadline = time.monotonic() + 420

    def epoch0_logged() -> bool:
        # Rank 0 logs an epoch to MLflow only after its checkpoint is persisted: once
        # epoch 0 is logged, round 2 has a checkpoint to resume from.
        if not (glob.glob(pattern) and os.path.isfile(id_file)):
            return False
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out}/mlflow.db"
        client = mlflow.MlflowClient(uri)
        with open(id_file) as f:
            return bool(client.get_metric_history(f.read().strip(), "loss"))

    while not epoch0_logged():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "round 2 never wrote a checkpoint"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray and its workers
    proc.wait()
    assert not os.path.isfile(os.path.join(out, "round2", "train", "summary.json"))
    s = run_iterate(
        IterateConfig(
            out=out, data=tiny_corpus, init_checkpoint=init_ckpt, rounds=2, **_smoke_overrides()
        )
    )
    # Finished stages were skipped by both processes, not redone.
    assert before == {p: os.path.getmtime(os.path.join(out, p)) for p in done}
    # Same stages and artifacts as the uninterrupted run.
    for rel in ARTIFACTS:
        assert os.path.isfile(os.path.join(out, rel)), rel
    assert [r["round"] for r in s["rounds"]] == [1, 2]
    # Round 2's training continued from its checkpoint: one MLflow run, each epoch logged once.
    r2 = json.loads(Path(out, "round2/train/summary.json").read_text())
    assert r2["epochs"] == 2 and [h["epoch"] for h in r2["history"]] == [0, 1]
    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    assert [m.step for m in client.get_metric_history(r2["mlflow"]["run_id"], "loss")] == [0, 1]


def test_bad_iterate_input_is_reported_before_work(tiny_corpus, tmp_path, init_ckpt):
    with pytest.raises(ConfigError, match="init_checkpoint"):
        run_iterate(IterateConfig(out=str(tmp_path / "a"), data=tiny_corpus))
    with pytest.raises(ConfigError, match="no such encoder checkpoint"):
        run_iterate(
            IterateConfig(out=str(tmp_path / "b"), data=tiny_corpus, init_checkpoint="nope.pt")
        )
    with pytest.raises(ValueError, match="at least one value"):
        Schedule(k=[])
    with pytest.raises(ConfigError, match=r"^drop_fraction\[1\] must be in \[0, 1\) \(or auto\)"):
        Schedule(drop_fraction=[0.1, 1.5])  # round 2's value, refused when the config is read
    with pytest.raises(ConfigError, match=r"schedule.tau\[1\] must be > 0"):
        load_config(IterateConfig, None, ["schedule.tau=[3, 0]"])
    with pytest.raises(ConfigError, match="train.gate.tau is set by each round"):
        load_config(IterateConfig, None, ["train.gate.tau=5"])
    cfg = load_config(
        IterateConfig, None, ["head_init=false"]
    )  # the class-direction start is optional
    assert cfg.head_init is False
    man, _ = prepare_corpus(tiny_corpus, str(tmp_path / "m"))
    only_trials = {"dev": man.trials["dev"], "test": man.trials["test"]}
    t = pq.read_table(man.utterances)
    keep = set(pq.read_table(man.trials["test"])["enroll"].to_pylist())
    sub = str(tmp_path / "sub.parquet")
    pq.write_table(t.filter(pc.is_in(t["utt_id"], pa.array(sorted(keep)))), sub)
    with pytest.raises(ManifestError, match="nothing left to train on"):
        split_manifest(sub, only_trials, str(tmp_path / "split"))


def test_report_has_plots_and_lands_in_mlflow(full_run, capsys):
    out, s = full_run
    assert main(["report", out, "--json"]) == 0
    r = cli_json(capsys.readouterr().out)
    assert {"metrics", "det", "scores", "cluster_sizes", "rounds"} <= set(r["plots"])
    page = Path(r["report"]).read_text()
    assert page.count('<img src="data:image/png;base64,') >= 5
    assert "round 2" in page and "NMI" in page
    for png in r["plots"].values():
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    names = {a.path for a in client.list_artifacts(s["mlflow"]["run_id"], "report")}
    assert "report/report.html" in names and "report/det.png" in names


def test_report_of_a_folder_without_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err
