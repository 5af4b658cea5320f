"""``raysv export`` -> ``raysv verify`` through the real CLI, on WAV files in tmp folders."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysv.cli import main
from raysv.export.card import FORMAT, threshold_at_eer, threshold_at_min_dcf
from tests.conftest import cli_json
from tests.export.test_parity import tiny_checkpoint


def read_text(*parts) -> str:
    with open(os.path.join(*parts)) as f:
        return f.read()


def utts_table(root: str, rel: list[str]) -> pa.Table:
    return pa.table(
        {
            "utt_id": rel,
            "path": [os.path.join(root, r) for r in rel],
            "start_s": pa.array([None] * len(rel), pa.float64()),
            "end_s": pa.array([None] * len(rel), pa.float64()),
        }
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_corpus):
    """A training run folder as raysv pretrain leaves it: best_model.pt, summary.json,
    manifests/ (training manifest, counts), inputs/ (dev trials resolved to utt_ids)."""
    run = tmp_path_factory.mktemp("run")
    wav = os.path.join(tiny_corpus, "wav")
    lines = [ln.split() for ln in read_text(tiny_corpus, "trials", "dev.txt").splitlines()]
    dev = sorted({x for ln in lines for x in ln[1:]})
    train = sorted(
        os.path.relpath(os.path.join(d, f), wav)
        for d, _, fs in os.walk(wav)
        for f in fs
        if f.endswith(".wav")
    )
    train = [t for t in train if t not in set(dev)][:12]
    os.makedirs(run / "manifests")
    os.makedirs(run / "inputs")
    pq.write_table(utts_table(wav, train), run / "manifests" / "train.parquet")
    pq.write_table(utts_table(wav, dev), run / "inputs" / "dev_utts.parquet")
    pq.write_table(
        pa.table(
            {
                "label": [int(ln[0]) for ln in lines],
                "enroll": [ln[1] for ln in lines],
                "test": [ln[2] for ln in lines],
            }
        ),
        run / "inputs" / "dev_trials.parquet",
    )
    for name in ("trials", "utts"):  # a "test" split: the dev one again
        os.link(run / "inputs" / f"dev_{name}.parquet", run / "inputs" / f"test_{name}.parquet")
    (run / "manifests" / "summary.json").write_text(
        json.dumps({"data": "/somewhere/private", "utterances": 72, "dialogues": 9})
    )
    final = {"best.dev.eer": 31.5, "best.dev.min_dcf_0.01": 0.97, "best.test.eer": 33.0}
    (run / "summary.json").write_text(
        json.dumps({"final": final, "train_utterances": 12, "out": str(run)})
    )
    tiny_checkpoint(run / "best_model.pt", "ecapa")
    return run


@pytest.fixture(scope="module")
def model(run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("m") / "model")
    assert main(["export", "--checkpoint", str(run / "best_model.pt"), "--out", out]) == 0
    return out


def test_export_writes_the_three_files_and_a_card(model, run):
    assert sorted(os.listdir(model)) == ["_SUCCESS", "model.json", "model.onnx", "model.ts"]
    card = json.loads(read_text(model, "model.json"))
    assert card["format"] == FORMAT
    assert card["encoder"]["name"] == "ecapa" and card["embedding_dim"] == 16
    assert len(card["scoring"]["centre"]) == 16
    assert card["scoring"]["centre_from"]["utterances"] == 12
    assert card["training_data"] == {
        "utterances": 72,
        "dialogues": 9,
        "train_utterances": 12,
    }
    assert card["recorded_metrics"]["dev"]["eer"] == 31.5
    assert card["recorded_metrics"]["test"] == {"eer": 33.0}
    assert card["lock"].startswith("sha256:") and len(card["lock"]) == 71
    assert card["frontend"]["max_seconds"] == 10.0 and card["frontend"]["in_graph"]
    # the test split scored with the model's centre too: here the dev list again
    assert card["test"]["eer"] == card["dev"]["eer"] and "thresholds" not in card["test"]
    t = card["dev"]["thresholds"]
    assert -1.0 <= t["eer"] <= 1.0
    assert str(run) not in json.dumps(card) and "/somewhere/private" not in json.dumps(card)


def test_verify_trials_from_audio_gives_the_cards_dev_eer(model, tiny_corpus, capsys):
    """The ONNX path from the audio files scores the dev list as the export's PyTorch
    path did: same EER (to 0.1 %), and the miss and false-accept rates meet near the
    EER threshold."""
    card = json.loads(read_text(model, "model.json"))
    args = ["verify", "--trials", os.path.join(tiny_corpus, "trials", "dev.txt")]
    args += ["--root", os.path.join(tiny_corpus, "wav"), "--model", model, "--json"]
    assert main(args) == 0
    s = cli_json(capsys.readouterr().out)
    assert abs(s["eer"] - card["dev"]["eer"]) < 0.1
    assert abs(s["min_dcf_0.01"] - card["dev"]["min_dcf_0.01"]) < 1e-3
    assert s["threshold"] == card["dev"]["thresholds"]["eer"]


def test_verify_a_pair_accepts_and_rejects_at_the_cards_threshold(model, tiny_corpus, capsys):
    wav = os.path.join(tiny_corpus, "wav")
    line = read_text(tiny_corpus, "trials", "dev.txt").split("\n")[0].split()
    a, b = (os.path.join(wav, x) for x in line[1:])
    assert main(["verify", a, b, "--model", model, "--json"]) == 0
    s = cli_json(capsys.readouterr().out)
    card = json.loads(read_text(model, "model.json"))
    assert s["threshold"] == card["dev"]["thresholds"]["eer"]
    assert s["decision"] == ("accept" if s["score"] >= s["threshold"] else "reject")
    # the same pair at thresholds just above and below its score
    for thr, want in ((s["score"] - 1e-3, "ACCEPT"), (s["score"] + 1e-3, "REJECT")):
        assert main(["verify", a, b, "--model", model, "--threshold", str(thr)]) == 0
        assert capsys.readouterr().out.startswith(want)
    assert main(["verify", a, a, "--model", model, "--json"]) == 0
    assert cli_json(capsys.readouterr().out)["score"] == pytest.approx(1.0, abs=1e-5)


def test_bad_input_is_one_line_and_exit_2(model, tiny_corpus, tmp_path, capsys):
    wav = os.path.join(tiny_corpus, "wav")
    good = os.path.join(wav, read_text(tiny_corpus, "trials", "dev.txt").split("\n")[0].split()[1])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    (tmp_path / "notamodel").mkdir()
    cases = [
        (["verify", good, str(tmp_path / "missing.wav"), "--model", model], "file does not exist"),
        (["verify", good, str(corrupt), "--model", model], "unreadable audio"),
        (["verify", good, good, "--model", str(tmp_path / "notamodel")], "not an exported model"),
        (["verify", good, good, "--model", str(tmp_path / "nowhere")], "no such model folder"),
        (["verify", good, "--model", model], "give two recordings"),
        (
            ["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")],
            "no such encoder checkpoint",
        ),
    ]
    for args, msg in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


def test_export_refuses_a_folder_it_did_not_write_and_replaces_its_own(
    run, model, tmp_path, capsys
):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    args = ["export", "--checkpoint", str(run / "best_model.pt"), "--out", str(foreign)]
    assert main(args) == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(os.listdir(foreign)) == ["notes.txt"]
    emb = tmp_path / "emb"  # another raysv command's output is not replaced either
    emb.mkdir()
    (emb / "_SUCCESS").write_text(
        json.dumps({"format": "raysv-output/1", "command": "raysv embed", "rows": 0, "parts": []})
    )
    assert main(["export", "--checkpoint", str(run / "best_model.pt"), "--out", str(emb)]) == 2
    assert "holds the output of raysv embed" in capsys.readouterr().err
    import shutil

    again = str(tmp_path / "again")
    shutil.copytree(model, again)  # an earlier export: replaced whole
    os.remove(os.path.join(again, "model.ts"))
    assert main(["export", "--checkpoint", str(run / "best_model.pt"), "--out", again]) == 0
    assert sorted(os.listdir(again)) == ["_SUCCESS", "model.json", "model.onnx", "model.ts"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".again")]  # no leftovers


def test_thresholds_are_the_operating_points():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200, int), np.zeros(2000, int)]
    scores = np.r_[rng.normal(0.6, 0.15, 200), rng.normal(0.1, 0.15, 2000)]
    t = threshold_at_eer(scores, labels)
    miss = (scores[labels == 1] < t).mean()
    fa = (scores[labels == 0] >= t).mean()
    assert abs(miss - fa) < 0.01  # the rates meet there
    d = threshold_at_min_dcf(scores, labels, 0.01)
    assert d > t  # a rare target: a stricter threshold

    def cost(th):
        return 0.01 * (scores[labels == 1] < th).mean() + 0.99 * (scores[labels == 0] >= th).mean()

    assert all(cost(d) <= cost(x) + 1e-12 for x in np.unique(scores))


def test_embed_with_the_model_then_evaluate_scores_as_verify(
    model, run, tiny_corpus, tmp_path, capsys
):
    """raysv embed --model (ONNX Runtime, no Ray) over a folder, then raysv evaluate
    --model (the card's centre): the EER raysv verify --trials gives on the same list;
    a corrupt file costs its row only; a manifest gives the same embeddings."""
    import shutil

    from raysv.data import fs
    from raysv.evaluation.scoring import embedding_matrix

    audio = tmp_path / "audio"
    shutil.copytree(os.path.join(tiny_corpus, "wav"), audio)
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    n_files = sum(len([f for f in fs_ if f.endswith(".wav")]) for _, _, fs_ in os.walk(audio))
    out = str(tmp_path / "emb")
    assert main(["embed", "--model", model, "--audio", str(audio), "--out", out, "--json"]) == 0
    s = cli_json(capsys.readouterr().out)
    assert s["rows"] == n_files - 1 and s["unreadable"] == 1
    assert s["unreadable_examples"][0]["utt_id"] == "corrupt.wav"
    trials = os.path.join(tiny_corpus, "trials", "dev.txt")
    assert (
        main(["evaluate", "--trials", trials, "--embeddings", out, "--model", model, "--json"]) == 0
    )
    ev = cli_json(capsys.readouterr().out)
    args = ["verify", "--trials", trials, "--root", str(audio), "--model", model, "--json"]
    assert main(args) == 0
    ver = cli_json(capsys.readouterr().out)
    assert ev["eer"] == pytest.approx(ver["eer"], abs=1e-9)
    assert ev["min_dcf_0.01"] == pytest.approx(ver["min_dcf_0.01"], abs=1e-9)
    # the dev utterances through a manifest: the same vectors as from the folder
    out2 = str(tmp_path / "emb2")
    man = str(run / "inputs" / "dev_utts.parquet")
    assert main(["embed", "--model", model, "--manifest", man, "--out", out2]) == 0
    capsys.readouterr()
    ids1, e1 = embedding_matrix(fs.read_table(out))
    ids2, e2 = embedding_matrix(fs.read_table(out2))
    index = {u: i for i, u in enumerate(ids1)}
    np.testing.assert_allclose(e2, e1[[index[u] for u in ids2]], atol=1e-6)
    # --model and --checkpoint together: one line, exit 2
    bad = ["embed", "--model", model, "--audio", str(audio), "--out", str(tmp_path / "e3")]
    assert main([*bad, "--checkpoint", str(run / "best_model.pt")]) == 2
    assert "drop --checkpoint" in capsys.readouterr().err


def test_a_run_without_a_training_manifest_takes_the_centre_its_dev_scoring_used(
    run, tmp_path, capsys
):
    """A Stage II or iterate round's run folder has no manifests/train.parquet but keeps
    inputs/centre_utts.parquet (the training rows whose mean centred its dev scoring):
    export centres on those, not on zero (issue #24)."""
    import shutil

    other = tmp_path / "round"
    os.makedirs(other / "inputs")
    for name in ("dev_trials", "dev_utts"):
        shutil.copy(run / "inputs" / f"{name}.parquet", other / "inputs")
    centre = pq.read_table(run / "manifests" / "train.parquet").slice(0, 5)
    pq.write_table(centre, other / "inputs" / "centre_utts.parquet")
    shutil.copy(run / "best_model.pt", other / "best_model.pt")
    out = str(tmp_path / "m")
    assert main(["export", "--checkpoint", str(other / "best_model.pt"), "--out", out]) == 0
    capsys.readouterr()
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    frm = card["scoring"]["centre_from"]
    assert frm["source"] == "the run's centre sample" and frm["utterances"] == 5
    assert np.linalg.norm(card["scoring"]["centre"]) > 0
