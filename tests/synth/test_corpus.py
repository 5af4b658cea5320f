import dataclasses
import hashlib
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysv.data.corpus import prepare_corpus
from raysv.errors import ConfigError
from raysv.synth.corpus import SynthConfig, plan_corpus, synthesize
from raysv.synth.voice import random_channel, random_voice, render
from tests.conftest import TINY


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            if f.endswith((".wav", ".jsonl", ".txt")):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    h.update(f.encode() + fh.read())
    return h.hexdigest()


def test_render_is_deterministic_and_sane():
    v = random_voice(np.random.default_rng(0))
    c = random_channel(np.random.default_rng(1))
    a = render(v, c, 1.5, np.random.default_rng(2))
    b = render(v, c, 1.5, np.random.default_rng(2))
    assert np.array_equal(a, b) and a.shape == (24000,) and a.dtype == np.float32
    assert np.isfinite(a).all() and 0.05 < np.abs(a).max() < 1.0
    assert not np.array_equal(a, render(v, c, 1.5, np.random.default_rng(3)))


def test_corpus_is_deterministic_for_a_seed_and_process_count(tmp_path, tiny_corpus):
    cfg = dataclasses.replace(TINY, workers=2)
    synthesize(cfg, str(tmp_path / "again"))
    assert _digest(tiny_corpus) == _digest(tmp_path / "again")  # 1 process vs 2: same bytes
    other = dataclasses.replace(TINY, seed=4)
    synthesize(other, str(tmp_path / "other"))
    assert _digest(tmp_path / "other") != _digest(tiny_corpus)


def test_splits_are_disjoint_and_trials_valid(tiny_corpus):
    spk = pq.read_table(os.path.join(tiny_corpus, "meta", "speakers.parquet")).to_pylist()
    split = {r["speaker"]: r["split"] for r in spk}
    assert sorted(split.values()).count("train") == TINY.train_speakers
    for name in ("dev", "test"):
        with open(os.path.join(tiny_corpus, "trials", f"{name}.txt")) as f:
            lines = f.read().split("\n")[:-1]
        assert len(lines) == TINY.trials_per_split
        labels = set()
        for line in lines:
            lab, a, b = line.split()
            labels.add(lab)
            assert os.path.isfile(os.path.join(tiny_corpus, "wav", a)) and os.path.isfile(
                os.path.join(tiny_corpus, "wav", b)
            )
            sa, sb = a.split("/")[0], b.split("/")[0]
            assert split[sa] == split[sb] == name
            assert (lab == "1") == (sa == sb)
        assert labels == {"0", "1"}


def test_dialogues_match_the_ground_truth(tiny_corpus):
    truth = {
        r["dialogue_id"]: r
        for r in pq.read_table(
            os.path.join(tiny_corpus, "meta", "dialogues_truth.parquet")
        ).to_pylist()
    }
    with open(os.path.join(tiny_corpus, "dialogues.jsonl")) as f:
        dialogues = [json.loads(line) for line in f]
    assert len(dialogues) == len(truth) > 0
    for d in dialogues:
        t = truth[d["dialogue_id"]]
        speakers = {p.split("/")[1] for p in d["utterances"]}
        sessions = {p.split("/")[2] for p in d["utterances"]}
        assert TINY.min_dialogue <= len(d["utterances"]) <= TINY.max_dialogue
        assert t["multi_speaker"] == (len(speakers) == 2)
        if t["multi_speaker"]:
            assert len(sessions) == 1  # the intruder talks into the host's device
        assert t["cross_session"] == (len(sessions) == 2 and len(speakers) == 1)
        for p in d["utterances"]:
            assert os.path.isfile(os.path.join(tiny_corpus, p))


def test_plan_fractions_at_scale():
    cfg = SynthConfig(
        train_speakers=300,
        dev_speakers=5,
        test_speakers=5,
        utts_per_speaker=20,
        multi_speaker_fraction=0.2,
        cross_session_fraction=0.3,
    )
    plan = plan_corpus(cfg)
    multi = np.mean([d["multi_speaker"] for d in plan.dialogues])
    cross = np.mean([d["cross_session"] for d in plan.dialogues if not d["multi_speaker"]])
    assert 0.17 < multi < 0.23 and 0.26 < cross < 0.34
    sizes = [d["num_utts"] for d in plan.dialogues]
    assert min(sizes) >= 2 and max(sizes) <= 6
    names = [u.name for u in plan.utts]
    assert len(names) == len(set(names))


def test_generated_corpus_imports(tiny_corpus, tmp_path):
    man, summary = prepare_corpus(tiny_corpus, str(tmp_path / "m"))
    n_utts = sum(
        1
        for _, _, fs in os.walk(os.path.join(tiny_corpus, "wav"))
        for f in fs
        if f.endswith(".wav")
    )
    assert summary["utterances"] == n_utts and summary["skipped"] == {}
    truth = pq.read_table(os.path.join(tiny_corpus, "meta", "dialogues_truth.parquet"))
    assert summary["dialogues"] == truth.num_rows
    assert summary["trials_dev"] == summary["trials_test"] == TINY.trials_per_split
    d = pq.read_table(man.dialogues)
    assert sorted(d.column("num_utts").to_pylist()) == sorted(truth.column("num_utts").to_pylist())


def test_config_errors():
    with pytest.raises(ConfigError, match="train_speakers must be >= 2"):
        SynthConfig(train_speakers=1)
    with pytest.raises(ConfigError, match="min_dialogue"):
        SynthConfig(min_dialogue=1)
