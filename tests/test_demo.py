"""The README's main job, end to end on a local Ray and a local MLflow store."""

import json
import os
from pathlib import Path

import pytest

from raysv.cli import main
from tests.conftest import cli_json

TINY_DEMO = [
    "--set",
    "synth.train_speakers=3",
    "--set",
    "synth.dev_speakers=3",
    "--set",
    "synth.test_speakers=3",
    "--set",
    "synth.utts_per_speaker=4",
    "--set",
    "synth.trials_per_split=30",
    "--set",
    "synth.min_seconds=0.8",
    "--set",
    "synth.max_seconds=1.2",
    # Stage I as small as it gets: one epoch of a tiny ECAPA.
    "--set",
    "pretrain.model.kwargs={channels: 16, embed_dim: 16, attn_bottleneck: 16}",
    "--set",
    "pretrain.data.n_mels=24",
    "--set",
    "pretrain.data.crop_seconds=0.8",
    "--set",
    "pretrain.data.augment.prob=0.0",
    "--set",
    "pretrain.train.epochs=1",
    "--set",
    "pretrain.train.batch_size=2",
    # Stage II: one round of two epochs on 4 clusters (tests/test_iterate.py runs
    # two rounds, a kill and a resume of the same pipeline).
    "--set",
    "stage2.rounds=1",
    "--set",
    "stage2.schedule={k: [4], drop_fraction: [0.0], min_cluster_size: [1], tau: [3.0]}",
    "--set",
    "stage2.cluster.iterations=5",
    "--set",
    "stage2.train.data={crop_seconds: 0.8, augment: {prob: 0.0}, eval_max_seconds: 2.0}",
    "--set",
    "stage2.train.head_warmup_epochs=0",
    "--set",
    "stage2.train.gate={name: lgl, warmup_epochs: 1}",
    "--set",
    "stage2.train.train={epochs: 2, batch_size: 4}",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_local):
    out = str(tmp_path_factory.mktemp("demo") / "run")
    return out


def test_demo_runs_logs_and_resumes(demo_run, capsys, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="raysv"):
        assert main(["demo", "--out", demo_run, *TINY_DEMO, "--json"]) == 0
    s = cli_json(capsys.readouterr().out)
    # Each training stage gives an estimate of its duration from its first steps.
    said = [r.getMessage() for r in caplog.records]
    for label in ("Stage I", "Stage II (round1)"):
        assert any(m.startswith(f"{label}: about ") and "s/step" in m for m in said), said
    for split in ("dev", "test"):
        r = s["baseline"][split]
        assert 0 <= r["eer"] <= 100 and r["n_target"] > 0 and r["n_nontarget"] > 0
    assert s["embed"]["rows"] == s["ingest"]["utterances"] > 0
    assert s["mlflow"]["tracking_uri"].startswith("sqlite:///")
    # Stage I ran; Stage II ran its round; every stage was evaluated on the trials.
    assert s["stage1"]["epochs"] == 1
    assert list(s["results"]) == ["baseline", "stage1", "round1", "supervised_reference"]
    assert 0 <= s["results"]["supervised_reference"]["test"]["eer"] <= 100
    for stage in ("stage1", "round1"):
        assert 0 <= s["results"][stage]["test"]["eer"] <= 100
    assert 0 <= s["results"]["round1"]["nmi"] <= 1 and "nmi_after" in s["results"]["round1"]
    assert os.path.isfile(os.path.join(demo_run, "summary.json"))
    assert os.path.isfile(s["report"]) and os.path.isfile(
        os.path.join(demo_run, "report", "det.png")
    )

    import mlflow

    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    run = client.get_run(s["mlflow"]["run_id"])
    assert run.data.metrics["baseline.test.eer"] == pytest.approx(s["baseline"]["test"]["eer"])
    assert run.data.params["synth.train_speakers"] == "3"

    # A rerun reuses every finished stage (no re-synthesis, no re-embedding).
    assert main(["demo", "--out", demo_run, *TINY_DEMO]) == 0
    out, err = capsys.readouterr()

    def row(name: str) -> list[str]:  # a table row's cells after the stage's name
        (line,) = [x for x in out.splitlines() if x.startswith(name + " ")]
        return line[len(name) :].split()

    assert row("baseline (log-mel)")[2] == f"{s['results']['baseline']['test']['eer']:.2f}"
    assert row("Stage II round 1")[0] == f"{s['results']['round1']['dev']['eer']:.2f}"
    with open(os.path.join(demo_run, "summary.json")) as f:
        again = json.load(f)
    assert again["embed"] == {"out": s["embed"]["out"], "skipped": True}
    assert again["baseline"]["test"]["eer"] == pytest.approx(s["baseline"]["test"]["eer"])
    assert again["stage1"]["steps"] == s["stage1"]["steps"]  # Stage I was not retrained
    assert again["results"] == s["results"]  # nor were the rounds


def test_demo_on_a_user_corpus_folder(tiny_corpus, tmp_path, ray_local, capsys):
    argv = [
        "demo",
        "--data",
        tiny_corpus,
        "--out",
        str(tmp_path / "r"),
        "--set",
        "stage1=false",
        "--json",
    ]
    assert main(argv) == 0
    s = cli_json(capsys.readouterr().out)
    assert "synth" not in s and s["ingest"]["data"] == tiny_corpus
    assert s["baseline"]["dev"]["n_target"] > 0


def test_demo_bad_data_folder(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "not a corpus folder" in capsys.readouterr().err


def _user_layout(src: str, dst: str, with_dialogues: bool) -> dict:
    """The generated corpus re-laid the way a user's unlabeled corpus is: training
    audio renamed at random under train/ (named by a hand-written dialogues.jsonl)
    and unlabeled/, no speaker folders for it; dev/test speakers under wav/."""
    import random
    import shutil

    import pyarrow.parquet as pq

    splits = dict(
        zip(
            *pq.read_table(
                os.path.join(src, "meta", "speakers.parquet"), columns=["speaker", "split"]
            )
            .to_pydict()
            .values(),
            strict=True,
        )
    )
    rng = random.Random(7)
    new_path: dict[str, str] = {}
    for spk, split in splits.items():
        for ses in sorted(os.listdir(os.path.join(src, "wav", spk))):
            for name in sorted(os.listdir(os.path.join(src, "wav", spk, ses))):
                old = f"wav/{spk}/{ses}/{name}"
                if split == "train":
                    folder = "train" if with_dialogues else f"unlabeled/{rng.randrange(3)}"
                    rel = f"{folder}/{rng.getrandbits(40):010x}.wav"
                else:
                    rel = old
                os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
                shutil.copy(os.path.join(src, old), os.path.join(dst, rel))
                new_path[old] = rel
    shutil.copytree(os.path.join(src, "trials"), os.path.join(dst, "trials"))
    if with_dialogues:
        with (
            open(os.path.join(src, "dialogues.jsonl")) as f,
            open(os.path.join(dst, "dialogues.jsonl"), "w") as g,
        ):
            for line in f:
                d = json.loads(line)
                paths = [p if isinstance(p, str) else p["path"] for p in d["utterances"]]
                g.write(
                    json.dumps(
                        {
                            "dialogue_id": d["dialogue_id"],
                            "utterances": [new_path[p] for p in paths],
                        }
                    )
                    + "\n"
                )
    n_train = sum(1 for old in new_path if splits[old.split("/")[1]] == "train")
    return {"train": n_train, "held_out": len(new_path) - n_train}


@pytest.mark.slow  # ~3-5 min each on 2 cores; .ci/run runs both as its second step
@pytest.mark.parametrize("with_dialogues", [True, False], ids=["dialogues", "utterances-only"])
def test_demo_on_a_users_unlabeled_corpus(tmp_path, ray_local, tiny_corpus, capsys, with_dialogues):
    """`raysv demo --data` on training audio with random names outside speaker folders."""
    data = str(tmp_path / "corpus")
    counts = _user_layout(tiny_corpus, data, with_dialogues)
    pairs = zip(TINY_DEMO[::2], TINY_DEMO[1::2], strict=True)
    args = []
    for flag, value in pairs:  # the demo's own settings, without the generator's
        if not value.startswith("synth."):
            args += [flag, value.replace("k: [4]", "k: [auto]")]
    out = str(tmp_path / "run")
    assert main(["demo", "--data", data, "--out", out, *args, "--json"]) == 0
    s = cli_json(capsys.readouterr().out)
    ing = s["ingest"]
    assert (
        ing["train_utterances"] == counts["train"]
        and ing["held_out_utterances"] == counts["held_out"]
    )
    assert ("dialogues" in ing) == with_dialogues
    # Nothing of a trial speaker was trained on, in either stage.
    stage1 = json.loads(Path(out, "stage1", "summary.json").read_text())
    # (in dialogue mode: the training utterances that belong to a usable dialogue)
    assert 0 < stage1["train_utterances"] <= counts["train"]
    assert stage1["train_utterances"] == counts["train"] or with_dialogues
    assert s["stage2"]["train_utterances"] == counts["train"]
    # k came from the data, with its evidence beside the labels.
    r1 = s["stage2"]["rounds"][0]
    assert r1["k_auto"] is True and 2 <= r1["k"] <= counts["train"] // 3
    auto = json.loads(Path(r1["labels"], "_auto_k.json").read_text())
    assert auto["k"] == r1["k"] and len(auto["table"]) >= 3
    # merged down to the threshold calibrated on the dev trials of the same encoder
    dev = json.loads(Path(out, "stage2", "round0", "embeddings", "_scores.json").read_text())["dev"]
    assert auto["source"]["threshold"] == dev["merge_threshold"]
    # (on this tiny corpus, 36 training utterances, merging may leave no group of 3:
    # then the silhouette rule decides, and the evidence says why)
    assert auto["method"] == "merge" or "too few to cluster" in auto["fallback_from_merging"]
    assert os.path.isfile(os.path.join(r1["labels"], "_auto_k.png"))
    assert "chosen from the embeddings" in Path(s["report"]).read_text()
    assert 0 <= s["results"]["round1"]["test"]["eer"] <= 100
    # No speaker labels for the training audio: no supervised reference, said so.
    assert "supervised_reference" not in s["results"]
    assert "have no speaker label" in s["stage2"]["reference_skipped"]
