"""Corpus folders laid out the way users have them, not the way raysv synth writes them.

Training audio with random names outside any speaker folder (named by a
hand-written dialogues.jsonl), unlabeled audio at any depth in WAV/FLAC/OGG,
files that are empty, corrupt or in a format libsndfile cannot decode, paths
that leave the folder, and trial speakers under wav/ that must never be
trained on.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from raysv.data.corpus import prepare_corpus, refuse_stale
from raysv.errors import ManifestError
from tests.conftest import write_wav


def _audio(path, seconds=1.0, seed=0, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    if fmt == "OGG":
        sf.write(path, data, 16000, format="OGG", subtype="VORBIS")
    else:
        sf.write(path, data, 16000)
    return path


def user_corpus(root) -> dict:
    """A corpus folder a user would write by hand; returns what it holds."""
    root = str(root)
    # Evaluation speakers (and one labelled training speaker no trial names) under wav/.
    for spk in ("id100", "id101", "id102", "id200"):
        for ses in ("s1", "s2"):
            for u in range(2):
                write_wav(f"{root}/wav/{spk}/{ses}/{u:05d}.wav", seed=hash((spk, ses, u)) % 1000)
    # Training audio: random names in train/, mixed formats, named by dialogues.jsonl.
    names = ["x7f3a", "q19zz", "mm0k2", "p4p4p", "zz8b1", "a0a0c"]
    paths = []
    for i, name in enumerate(names):
        ext, fmt = [(".wav", None), (".flac", None), (".ogg", "OGG")][i % 3]
        _audio(f"{root}/train/{name}{ext}", seed=i, fmt=fmt)
        paths.append(f"train/{name}{ext}")
    # Unlabeled audio at any depth, plus a file libsndfile cannot decode.
    _audio(f"{root}/unlabeled/batch1/deep/er/u1.flac", seed=11)
    _audio(f"{root}/unlabeled/u2.ogg", seed=12, fmt="OGG")
    Path(root, "unlabeled", "voice.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    Path(root, "unlabeled", "empty.wav").write_bytes(b"")
    Path(root, "unlabeled", "corrupt.wav").write_bytes(b"RIFF....garbage" * 10)
    # A folder name that says "empty" must not make a corrupt file count as empty.
    Path(root, "unlabeled", "empty_room").mkdir()
    Path(root, "unlabeled", "empty_room", "mic1.wav").write_bytes(b"RIFF....garbage" * 10)
    # Outside the folder: must be refused unless opted in.
    _audio(os.path.join(os.path.dirname(root), "elsewhere.wav"), seed=13)
    lines = [
        {"dialogue_id": "d1", "utterances": paths[0:2]},
        {"dialogue_id": "d2", "utterances": [{"path": paths[2]}, {"path": paths[3]}]},
        # A trial utterance in a training dialogue: it must be held out.
        {"dialogue_id": "d3", "utterances": [paths[4], paths[5], "wav/id100/s1/00000.wav"]},
        {"dialogue_id": "d4", "utterances": ["../elsewhere.wav", "unlabeled/u2.ogg"]},
    ]
    with open(f"{root}/dialogues.jsonl", "w") as f:
        f.writelines(json.dumps(obj) + "\n" for obj in lines)
    os.makedirs(f"{root}/trials")
    with open(f"{root}/trials/dev.txt", "w") as f:
        f.write(
            "1 id100/s1/00000.wav id100/s2/00001.wav\n0 id100/s1/00000.wav id101/s1/00000.wav\n"
        )
    with open(f"{root}/trials/test.txt", "w") as f:
        f.write(
            "1 id102/s1/00000.wav id102/s2/00000.wav\n0 id102/s1/00001.wav id101/s2/00001.wav\n"
        )
    return {"train_names": names, "dialogue_paths": paths}


def _ids(path):
    return set(pq.read_table(path).column("utt_id").to_pylist())


def test_training_audio_anywhere_and_trial_speakers_held_out(tmp_path):
    data = tmp_path / "corpus"
    user_corpus(data)
    man, s = prepare_corpus(str(data), str(tmp_path / "man"))
    assert s["reused"] is False
    train = _ids(man.train)
    every = _ids(man.utterances)
    # Random-named training audio in train/ (WAV, FLAC, OGG) and unlabeled/ at any depth.
    for name in ("x7f3a", "q19zz", "mm0k2", "p4p4p", "zz8b1", "a0a0c"):
        assert f"train/{name}" in train
    assert {"unlabeled/batch1/deep/er/u1", "unlabeled/u2"} <= train
    # The wav/ speaker no trial names is training audio; every trial speaker's audio is not.
    assert {u for u in train if u.startswith("id200/")} == {
        f"id200/{s}/{u:05d}" for s in ("s1", "s2") for u in range(2)
    }
    for spk in ("id100", "id101", "id102"):
        assert not any(u.startswith(f"{spk}/") for u in train)
        assert any(u.startswith(f"{spk}/") for u in every)
    assert s["train_utterances"] == len(train) == 6 + 2 + 4
    assert s["held_out_utterances"] == len(every) - len(train) == 12
    # Dialogues hold training utterances only: d3 loses its trial utterance, d4 its
    # path outside the folder (then it is too short and dropped).
    dialogues = pq.read_table(man.dialogues).to_pylist()
    by_id = {d["dialogue_id"]: d["utt_ids"] for d in dialogues}
    assert set(by_id) == {"d1", "d2", "d3"}
    assert "id100/s1/00000" not in by_id["d3"] and len(by_id["d3"]) == 2
    utts = pq.read_table(man.train).to_pylist()
    assert all(u["speaker"] is None for u in utts if u["utt_id"].startswith("train/"))
    # Bad files are skipped, counted and named; nothing else is lost.
    assert s["skipped"]["unsupported_format"] == 1
    assert s["skipped"]["outside_corpus"] == 1
    assert s["skipped"]["empty_audio"] == 1 and s["skipped"]["unreadable_audio"] == 2
    skipped = [json.loads(x) for x in (tmp_path / "man" / "skipped.jsonl").read_text().splitlines()]
    m4a = next(p for p in skipped if p["kind"] == "unsupported_format")
    assert m4a["where"].endswith("voice.m4a") and "ffmpeg -i" in m4a["message"]
    outside = next(p for p in skipped if p["kind"] == "outside_corpus")
    assert outside["where"].endswith("dialogues.jsonl:4")
    assert "--allow-outside-paths" in outside["message"]


def test_outside_paths_only_when_allowed(tmp_path):
    data = tmp_path / "corpus"
    user_corpus(data)
    man, s = prepare_corpus(str(data), str(tmp_path / "man"), allow_outside=True)
    assert "outside_corpus" not in s["skipped"]
    dialogues = {d["dialogue_id"] for d in pq.read_table(man.dialogues).to_pylist()}
    assert "d4" in dialogues


def test_a_changed_corpus_is_imported_again(tmp_path):
    data = tmp_path / "corpus"
    user_corpus(data)
    out = str(tmp_path / "man")
    _, first = prepare_corpus(str(data), out)
    _, again = prepare_corpus(str(data), out)
    assert again["reused"] is True and again["train_utterances"] == first["train_utterances"]
    # The user adds a file and fixes nothing else: the next run sees it.
    time.sleep(0.01)
    _audio(str(data / "unlabeled" / "new" / "n1.wav"), seed=99)
    man, changed = prepare_corpus(str(data), out)
    assert changed["reused"] is False
    assert changed["train_utterances"] == first["train_utterances"] + 1
    assert "unlabeled/new/n1" in _ids(man.train)


def test_only_unlabeled_audio_and_no_dialogues(tmp_path):
    data = tmp_path / "corpus"
    for i in range(4):
        _audio(str(data / "unlabeled" / f"{i:03x}" / "rec.flac"), seed=i)
    man, s = prepare_corpus(str(data), str(tmp_path / "man"))
    assert man.dialogues is None and man.trials == {}
    assert s["train_utterances"] == 4 and s["held_out_utterances"] == 0


def test_a_folder_without_audio_sources_names_the_layout(tmp_path):
    (tmp_path / "corpus" / "stuff").mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"not a corpus folder .*unlabeled/"):
        prepare_corpus(str(tmp_path / "corpus"), str(tmp_path / "man"))


def test_every_training_utterance_is_a_trial_speaker(tmp_path):
    data = tmp_path / "corpus"
    for spk in ("a", "b"):
        for u in range(2):
            write_wav(str(data / "wav" / spk / "s" / f"{u}.wav"), seed=u)
    (data / "trials").mkdir()
    (data / "trials" / "dev.txt").write_text("1 a/s/0.wav a/s/1.wav\n0 a/s/0.wav b/s/0.wav\n")
    with pytest.raises(ManifestError, match="nothing left to train on"):
        prepare_corpus(str(data), str(tmp_path / "man"))


def test_a_list_file_names_training_audio_anywhere_in_the_folder(tmp_path):
    data = tmp_path / "corpus"
    _audio(str(data / "recordings" / "2024" / "call-17.flac"), seed=1)
    _audio(str(data / "recordings" / "2025" / "call-18.wav"), seed=2)
    (data / "unlabeled.txt").write_text(
        "# my training list\nrecordings/2024/call-17.flac\n\nrecordings/2025/call-18.wav\n"
        "recordings/missing.wav\n/etc/hostname\n"
    )
    man, s = prepare_corpus(str(data), str(tmp_path / "man"))
    assert _ids(man.train) == {"recordings/2024/call-17", "recordings/2025/call-18"}
    assert s["skipped"] == {"missing_file": 1, "outside_corpus": 1}
    skipped = [json.loads(x) for x in (tmp_path / "man" / "skipped.jsonl").read_text().splitlines()]
    assert any(p["where"].endswith("unlabeled.txt:6") for p in skipped)


def test_results_of_an_old_import_are_not_mixed_with_a_new_one(tmp_path):
    data = tmp_path / "corpus"
    user_corpus(data)
    run = tmp_path / "run"
    _, s = prepare_corpus(str(data), str(run / "manifests"))
    refuse_stale(s, str(run), ("stage1",), "demo")  # a fresh run folder: nothing to mix
    (run / "stage1").mkdir()
    (run / "stage1" / "summary.json").write_text("{}")
    _, s = prepare_corpus(str(data), str(run / "manifests"))
    refuse_stale(s, str(run), ("stage1",), "demo")  # unchanged corpus: its results stand
    _audio(str(data / "unlabeled" / "late.wav"), seed=5)
    _, s = prepare_corpus(str(data), str(run / "manifests"))
    with pytest.raises(ManifestError, match=r"corpus changed since .*stage1 was made from the old"):
        refuse_stale(s, str(run), ("stage1",), "demo")
    # Started again: the new import is in place now (reused), and still refused.
    _, s = prepare_corpus(str(data), str(run / "manifests"))
    assert s["reused"] is True
    with pytest.raises(ManifestError, match=r"stage1 was made from the old import"):
        refuse_stale(s, str(run), ("stage1",), "demo")
    # The results removed (an empty folder, or a killed step's hidden temporary file,
    # left behind counts as removed): it goes on, and on the next start too.
    (run / "stage1" / "summary.json").unlink()
    (run / "stage1" / ".summary.json.tmp-1").write_text("{")
    refuse_stale(s, str(run), ("stage1",), "demo")
    (run / "stage1" / "summary.json").write_text("{}")  # made from the new import
    refuse_stale(s, str(run), ("stage1",), "demo")


def test_a_run_folder_from_before_the_import_record_is_taken_as_it_is(tmp_path):
    """No record yet (a run folder of an earlier raysv) and an unchanged import: its
    results stand; a changed import with results there is refused."""
    data = tmp_path / "corpus"
    user_corpus(data)
    run = tmp_path / "run"
    prepare_corpus(str(data), str(run / "manifests"))
    (run / "stage1").mkdir()
    (run / "stage1" / "summary.json").write_text("{}")
    _, s = prepare_corpus(str(data), str(run / "manifests"))
    refuse_stale(s, str(run), ("stage1",), "demo")
    assert json.loads((run / "_raysv_import.json").read_text())["demo"]["fingerprint"]
    (run / "_raysv_import.json").unlink()
    _audio(str(data / "unlabeled" / "late.wav"), seed=5)
    _, s = prepare_corpus(str(data), str(run / "manifests"))
    with pytest.raises(ManifestError, match=r"stage1 was made from the old import"):
        refuse_stale(s, str(run), ("stage1",), "demo")


def test_a_run_folder_inside_the_corpus_does_not_change_its_fingerprint(tmp_path):
    data = tmp_path / "corpus"
    user_corpus(data)
    out = data / "runs" / "demo" / "manifests"
    prepare_corpus(str(data), str(out))
    (data / "runs" / "demo" / "stage1.log").write_text("results written after the import")
    _, again = prepare_corpus(str(data), str(out))
    assert again["reused"] is True  # what the run writes is not the corpus
    # A run folder that is DIR itself can't hide DIR: a new file is still seen.
    _, own = prepare_corpus(str(data), str(data / "manifests"))
    _audio(str(data / "unlabeled" / "late.wav"), seed=5)
    _, changed = prepare_corpus(str(data), str(data / "manifests"))
    assert own["reused"] is False and changed["reused"] is False


def test_iterate_refuses_every_round_of_an_old_import(tmp_path):
    """raysv iterate's results of an earlier import are refused round by round: also
    rounds past this run's count (an earlier run with more rounds), final labels and
    the MLflow run id; what the message names is what must go."""
    from raysv.pipeline.iterate import IterateConfig, _manifests

    data = tmp_path / "corpus"
    user_corpus(data)
    out = tmp_path / "run"
    cfg = IterateConfig(out=str(out), data=str(data), rounds=1)
    _manifests(cfg, str(out))  # the first import: nothing made yet
    for name in ("round3", "final_labels"):
        (out / name).mkdir()
        (out / name / "_summary.json").write_text("{}")
    (out / "mlflow_run_id").write_text("0123")
    _audio(str(data / "unlabeled" / "late.wav"), seed=5)
    for left in ("round3", "final_labels", "mlflow_run_id"):
        with pytest.raises(ManifestError, match=f"{left} was made from the old import"):
            _manifests(cfg, str(out))
        path = out / left
        path.unlink() if path.is_file() else (path / "_summary.json").unlink()
    _manifests(cfg, str(out))  # all removed: it goes on
