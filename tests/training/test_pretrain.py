"""``raysv pretrain`` end to end on a local Ray: learning loop, tracking, resume, failures, bad input."""

import logging
import os

import mlflow
import numpy as np
import pytest

from raysv.cli import main
from raysv.config import from_dict, load_config
from raysv.errors import ConfigError, ManifestError
from raysv.reporting.text import pretrain_text
from raysv.training.config import PretrainConfig
from raysv.training.pretrain import prepare_inputs, run_pretrain
from tests.conftest import cli_json, write_empty_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "pretrain_smoke.yaml")


def _run(capsys, *argv):
    code = main(["pretrain", "--config", SMOKE, *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return cli_json(out)


@pytest.fixture(scope="module")
def first_run(tiny_corpus, tmp_path_factory, ray_local):
    out = str(tmp_path_factory.mktemp("pt") / "run")
    return out


def test_pretrain_trains_tracks_and_resumes(first_run, tiny_corpus, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="raysv"):
        s = _run(capsys, "--data", tiny_corpus, "--out", first_run)
    where = os.path.join(first_run, "ray", "smoke")
    assert f"Stage I: checkpoints go to {where}" in caplog.messages
    assert s["epochs"] == 2 and len(s["history"]) == 2
    steps_per_epoch = s["history"][0]["steps_in_epoch"]
    assert steps_per_epoch >= 1 and s["steps"] == 2 * steps_per_epoch
    h = s["history"][-1]
    for key in (
        "loss",
        "dev_eer",
        "rej_w_mean",
        "rej_w_std",
        "rej_temperature",
        "samples_per_s",
        "data_wait_share",
        "step_seconds",
        "step_cpu_seconds",
    ):
        assert key in h, key
    # one thread's CPU time inside a step can't exceed the step's wall time
    assert 0 < h["step_cpu_seconds"] <= h["step_seconds"] + 1e-3
    # The AUC needs both kinds of dialogue among an epoch's rows. Epochs are cut from
    # one data stream by step count, so on this 25-dialogue corpus an epoch's rows are
    # not exactly the corpus and one epoch can (rarely) hold no multi-speaker dialogue.
    aucs = [e["rejection_auc"] for e in s["history"] if "rejection_auc" in e]
    assert aucs and all(0 <= a <= 1 for a in aucs)
    # which draws mix speakers (analysis: the manifest's speakers); an epoch with a mixed
    # draw also reports the AUC against the draws
    assert all(0 <= e["mixed_draw_share"] < 1 for e in s["history"])
    assert all(
        0 <= e["rejection_auc_drawn"] <= 1 for e in s["history"] if e["mixed_draw_share"] > 0
    )
    assert 0 < h["rej_w_mean"] < 1 and 0 < h["rej_temperature"] < 20
    assert (h["device"], h["backend"]) == ("cpu", "gloo")  # where the step ran
    for k in ("untrained.dev.eer", "best.dev.eer", "untrained.test.eer", "best.test.eer"):
        assert 0 <= s["final"][k] <= 100
    assert os.path.isfile(s["best_model"])
    # MLflow: params, per-epoch metrics from rank 0, final metrics and artifacts from the driver.
    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    run = client.get_run(s["mlflow"]["run_id"])
    assert run.data.params["loss.name"] == "ava" and run.data.params["train.batch_size"] == "4"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
    assert "final.best.test.eer" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "config.yaml",
        "best_model.pt",
    }

    # A seed reproduces a run (one worker): the same corpus, config and seed in another
    # folder give the same losses, dev EERs and test EER, to the bit (seeded pass order,
    # per-row crops, shuffle buffer and initialisation; per-row augmentation:
    # test_data's test_a_rows_randomness_depends_on_seed_pass_and_row_not_on_its_batch).
    a = _run(capsys, "--data", tiny_corpus, "--out", first_run + "_again")
    fields = ("loss", "dev_eer", "rej_w_mean", "rej_temperature")
    assert [[e[k] for k in fields] for e in a["history"]] == [
        [e[k] for k in fields] for e in s["history"]
    ]
    assert a["final"]["best.test.eer"] == s["final"]["best.test.eer"]

    # A second invocation with the same run name resumes: 2 more epochs, not a fresh start.
    held = [n for n in os.listdir(where) if os.path.isdir(os.path.join(where, n))]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="raysv"):
        r = _run(capsys, "--data", tiny_corpus, "--out", first_run, "--set", "train.epochs=4")
    said = f"Stage I: resuming from the last of {len(held)} checkpoint(s) at {where}"
    assert held and said in caplog.messages
    assert r["epochs"] == 4 and r["steps"] == 4 * steps_per_epoch
    assert [e["epoch"] for e in r["history"]] == [0, 1, 2, 3]
    assert r["history"][:2] == s["history"]  # the first part is kept as it was
    assert r["history"][2]["step"] == 3 * steps_per_epoch  # the step counter continues
    assert r["mlflow"]["run_id"] == s["mlflow"]["run_id"]  # and so does the MLflow run
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4


@pytest.mark.slow  # ~1 min: in .ci/run's second step
def test_worker_failure_restarts_from_checkpoint(tiny_corpus, tmp_path, ray_local, capsys):
    out = str(tmp_path / "fail")
    s = _run(
        capsys,
        "--data",
        tiny_corpus,
        "--out",
        out,
        "--set",
        "train.inject_failure_at_epoch=1",
        "--set",
        "loss.name=ge2e",
    )
    assert os.path.exists(os.path.join(out, ".injected_failure_1"))  # it did fail once
    assert s["epochs"] == 2 and [e["epoch"] for e in s["history"]] == [0, 1]
    assert s["steps"] == 2 * s["history"][0]["steps_in_epoch"]


def test_simclr_mode_within_a_time_budget(tiny_corpus, tmp_path, ray_local, capsys):
    simclr = ["--data", tiny_corpus, "--out", str(tmp_path / "simclr")]
    for setting in ("data.mode=utterance", "loss.name=ntxent", "train.epochs=3"):
        simclr += ["--set", setting]
    simclr += ["--set", "train.batch_size=8"]
    # a time budget that the first epoch spends
    s = _run(capsys, *simclr, "--set", "train.max_minutes=0.0001")
    assert s["epochs"] == 1 and "rej_w_mean" not in s["history"][0]
    # the budget ended the run normally after that epoch, with 2 of its 3 epochs left
    assert s["out_of_time"] and s["train_seconds"] == round(s["history"][0]["train_seconds"], 1)
    assert s["train_seconds"] > 0 and os.path.isfile(s["best_model"])
    # Evaluation audio is never trained on: the training shards hold no utterance of a
    # dev/test speaker (which speakers those are: the generator's split, analysis only).
    import pyarrow.parquet as pq

    splits = pq.read_table(os.path.join(tiny_corpus, "meta", "speakers.parquet")).to_pydict()
    held = {
        spk
        for spk, split in zip(splits["speaker"], splits["split"], strict=True)
        if split != "train"
    }
    trained = pq.read_table(os.path.join(s["out"], "inputs", "train")).column("path").to_pylist()
    assert trained and not any(p.split(os.sep)[-3] in held for p in trained)
    n_train = sum(
        len(files)
        for spk, split in zip(splits["speaker"], splits["split"], strict=True)
        if split == "train"
        for _, _, files in os.walk(os.path.join(tiny_corpus, "wav", spk))
    )
    assert len(trained) == s["train_utterances"] == n_train
    assert s["held_out_utterances"] > 0
    # The same run again without a budget goes on to its 3 epochs (the budget is this
    # invocation's, not the checkpoint's), and was not cut short.
    again = _run(capsys, *simclr)
    assert again["epochs"] == 3 and "out_of_time" not in again
    assert again["history"][0] == s["history"][0] and again["train_seconds"] > s["train_seconds"]


def test_the_time_budget_ends_a_run_only_with_epochs_left():
    """``worker.out_of_time`` outside a process group (rank 0): spent and epochs left."""
    from raysv.training.worker import out_of_time

    assert out_of_time(61.0, 1.0, 2, "cpu") and out_of_time(60.0, 1.0, 1, "cpu")
    assert not out_of_time(59.0, 1.0, 2, "cpu")  # not spent yet
    assert not out_of_time(600.0, 1.0, 0, "cpu")  # the last epoch: the run ends as planned
    assert not out_of_time(600.0, None, 2, "cpu")  # no budget


def test_a_trial_file_left_in_a_training_manifest_is_not_trained_on(tiny_corpus, tmp_path, caplog):
    """Explicit manifests (no corpus folder): the utterances the trials name are dropped."""
    import logging

    import pyarrow.parquet as pq

    from raysv.data.corpus import prepare_corpus

    man, _ = prepare_corpus(tiny_corpus, str(tmp_path / "man"))
    utts = pq.read_table(man.utterances)  # every utterance, trial ones included
    trials = {s: os.path.join(tiny_corpus, "trials", f"{s}.txt") for s in ("dev", "test")}
    cfg = _cfg(
        tmp_path,
        None,
        data={
            "utterances": man.utterances,
            "mode": "utterance",
            "dev_trials": trials["dev"],
            "test_trials": trials["test"],
        },
        loss={"name": "ntxent", "rejection": {"enabled": False}},
    )
    named = set()
    for uri in trials.values():
        with open(uri) as f:
            named |= {x.rsplit(".", 1)[0] for line in f for x in line.split()[1:]}
    assert named <= set(utts["utt_id"].to_pylist())
    with caplog.at_level(logging.INFO, logger="raysv"):
        inputs = prepare_inputs(cfg)
    trained = set(inputs["table"].column("utt_id").to_pylist())
    assert trained and not trained & named
    assert trained == set(utts["utt_id"].to_pylist()) - named
    assert inputs["counts"]["held_out_utterances"] == len(named)
    assert any(
        "held out for evaluation" in r.getMessage() and f"; {len(named)} held out" in r.getMessage()
        for r in caplog.records
    )


def _cfg(tmp_path, corpus, **over):
    base = load_config(PretrainConfig, SMOKE)
    d = {"out": str(tmp_path / "bad"), "data": {"data": corpus}}
    for k, v in over.items():
        d.setdefault(k, {}).update(v) if isinstance(v, dict) else d.__setitem__(k, v)
    from raysv.config import to_dict

    merged = to_dict(base)
    for k, v in d.items():
        if isinstance(v, dict):
            merged[k].update(v)
        else:
            merged[k] = v
    return from_dict(PretrainConfig, merged)


def test_bad_input_fails_before_workers(tiny_corpus, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"train.batch_size \(500\) is larger than the data"):
        prepare_inputs(_cfg(tmp_path, tiny_corpus, train={"batch_size": 500}))
    with pytest.raises(ManifestError, match="no dialogue has at least 7 usable utterances"):
        prepare_inputs(
            _cfg(tmp_path, tiny_corpus, data={"utts_per_dialogue": 7, "short_dialogues": "drop"})
        )
    with pytest.raises(ConfigError, match="unknown encoder 'tdnn'"):
        run_pretrain(_cfg(tmp_path, tiny_corpus, model={"name": "tdnn"}))
    with pytest.raises(ConfigError, match="no training data"):
        prepare_inputs(from_dict(PretrainConfig, {"out": str(tmp_path / "x")}))
    empty = write_empty_manifest(tmp_path / "empty.parquet")
    with pytest.raises(ManifestError, match="manifest is empty"):
        prepare_inputs(
            from_dict(
                PretrainConfig, {"out": str(tmp_path / "y"), "data": {"utterances": str(empty)}}
            )
        )
    # Through the CLI: unknown loss name and unknown key are one-line errors.
    assert (
        main(["pretrain", "--config", SMOKE, "--data", tiny_corpus, "--set", "loss.name=triplet"])
        == 2
    )
    assert "unknown loss 'triplet'" in capsys.readouterr().err
    assert (
        main(["pretrain", "--config", SMOKE, "--data", tiny_corpus, "--set", "train.epoch=3"]) == 2
    )
    assert "unknown config key(s) train.epoch" in capsys.readouterr().err
    assert (
        main(["pretrain", "--config", SMOKE, "--data", tiny_corpus, "--set", "data.mode=utterance"])
        == 2
    )
    assert "data.mode=utterance (SimCLR) takes loss ntxent" in capsys.readouterr().err


@pytest.mark.slow  # ~1.5 min: in .ci/run's second step
def test_audio_gone_bad_during_training_stops_at_the_limit_and_resumes(
    tiny_corpus, tmp_path, ray_local, capsys
):
    """A third of the training dialogues' files turn unreadable after the import. With the
    default limit (5 %), the run stops after epoch 0's checkpoint with a one-line error
    naming files (also after Ray Train's restarts); run again unchanged, it stops before
    any step. Rerun with a limit that allows it, the same run resumes at epoch 1, skips
    and counts the rows, and keeps its step count."""
    import shutil

    import pyarrow.parquet as pq
    import torch

    from raysv.data.corpus import prepare_corpus
    from raysv.data.outputs import claim_run

    corpus = str(tmp_path / "corpus")
    shutil.copytree(tiny_corpus, corpus)
    out = str(tmp_path / "run")
    claim_run(out, "raysv pretrain")  # the run's own import, as its first step does it
    man, _ = prepare_corpus(corpus, os.path.join(out, "manifests"))  # the import: all readable
    t = pq.read_table(man.utterances, columns=["utt_id", "path"]).to_pydict()
    path_of = dict(zip(t["utt_id"], t["path"], strict=True))
    dialogues = pq.read_table(man.dialogues).column("utt_ids").to_pylist()
    bad = [path_of[u] for d in dialogues[::3] for u in d]
    for p in bad:
        with open(p, "wb") as f:
            f.write(b"RIFF gone bad")
    # Train from the import's manifests: `--data corpus` would see the folder changed
    # and import it again, skipping the bad files before training.
    data = []
    for key, value in (
        ("utterances", man.utterances),
        ("dialogues", man.dialogues),
        ("dev_trials", man.trials["dev"]),
        ("test_trials", man.trials["test"]),
    ):
        data += ["--set", f"data.{key}={value}"]

    code = main(
        ["pretrain", "--config", SMOKE, *data, "--out", out]
        + ["--set", "train.max_failures=1"]  # one restart, which must stop at once
    )
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    line = [ln for ln in err.splitlines() if ln.startswith("raysv pretrain: error:")]
    assert len(line) == 1 and "had unreadable audio" in line[0], err[-3000:]
    assert any(p in line[0] for p in bad) and "max_unreadable_share is 0.05" in line[0]
    assert "Traceback" not in err
    (kept,) = [  # epoch 0's checkpoint is there (Ray Train's restarts stopped at once)
        os.path.join(r, "state.pt") for r, _, f in os.walk(out) if "state.pt" in f
    ]
    epoch0 = torch.load(kept, weights_only=False)["state"]["history"]
    assert [e["epoch"] for e in epoch0] == [0] and epoch0[0]["unreadable_rows"] > 0
    stamp = os.path.getmtime(kept)

    # the same command, nothing fixed: the counts come back from the checkpoint and the
    # run stops before any step, keeping its checkpoint
    code = main(
        ["pretrain", "--config", SMOKE, *data, "--out", out, "-q"]
        + ["--set", "train.max_failures=0"]  # (restarts would stop the same way)
    )
    err = capsys.readouterr().err
    assert code == 2 and "max_unreadable_share is 0.05" in err, err[-3000:]
    assert [
        os.path.getmtime(os.path.join(r, "state.pt")) for r, _, f in os.walk(out) if "state.pt" in f
    ] == [stamp]

    s = _run(capsys, *data, "--out", out, "--set", "train.max_unreadable_share=0.5")
    assert s["history"][:1] == epoch0 and s["history"][1]["epoch"] == 1  # resumed at epoch 1
    assert s["unreadable_rows"] > epoch0[0]["unreadable_rows"]  # earlier counts included
    assert 0.2 < s["unreadable_share"] < 0.5 and 1 <= s["unreadable_files"] <= len(bad)
    assert any(p in s["unreadable_examples"][0] for p in bad)
    per_epoch = s["history"][0]["steps_in_epoch"]
    assert s["history"][1]["steps_in_epoch"] == per_epoch and s["steps"] == 2 * per_epoch
    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    metrics = client.get_run(s["mlflow"]["run_id"]).data.metrics
    assert metrics["final.unreadable_rows"] == s["unreadable_rows"]
    assert metrics["unreadable_rows"] == s["history"][1]["unreadable_rows"]  # per epoch
    assert "WARNING: skipped" in pretrain_text(s)


@pytest.mark.slow
def test_two_workers_gather_ids_and_draws_for_the_analysis(
    tiny_corpus, tmp_path, ray_local, capsys
):
    """Two gloo workers with rejection: every step gathers dialogue ids and drawn positions
    from both ranks (collectives every rank joins), rank 0 alone checks the unreadable
    share, and the analysis sees the global batch."""
    s = _run(
        capsys,
        "--data",
        tiny_corpus,
        "--out",
        str(tmp_path / "two"),
        "--set",
        "train.num_workers=2",
        "--set",
        "train.epochs=1",
    )
    h = s["history"][0]
    assert (h["device"], h["backend"]) == ("cpu", "gloo")
    assert s["steps"] == h["steps_in_epoch"] >= 1 and s["unreadable_rows"] == 0
    assert 0 <= h["mixed_draw_share"] < 1 and 0 < h["rej_w_mean"] < 1
    weights = np.load(os.path.join(s["out"], "rejection_weights.npz"))
    # both ranks' halves of every global batch of 4 dialogues, in rank order
    assert weights["idx"].shape == (4 * h["steps_in_epoch"],)
    assert weights["drawn_mixed"].shape == weights["idx"].shape
