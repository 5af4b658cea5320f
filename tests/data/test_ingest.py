"""Importers: right counts for each layout, and every bad input named in its message."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from raysv.cli import main
from raysv.data import fs, ingest
from raysv.data.problems import Problems
from raysv.data.trials import parse_trials, resolve_trials
from raysv.errors import ManifestError
from tests.conftest import write_empty_manifest, write_wav


def _vox(root, spk=3, ses=2, utts=2):
    for s in range(spk):
        for k in range(ses):
            for u in range(utts):
                write_wav(
                    root / f"id{s}" / f"ses{k}" / f"{u:05d}.wav",
                    seconds=0.5 + 0.1 * u,
                    seed=s * 100 + k * 10 + u,
                )
    return root


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_voxceleb_counts_and_fields(tmp_path):
    root = _vox(tmp_path / "vox")
    problems = Problems()
    t = ingest.probe_rows(ingest.scan_voxceleb(str(root), problems), problems)
    assert t.num_rows == 12 and not problems.items
    row = t.slice(0, 1).to_pylist()[0]
    assert (
        row["utt_id"] == "id0/ses0/00000"
        and row["speaker"] == "id0"
        and row["session_id"] == "id0/ses0"
    )
    assert row["duration_s"] == pytest.approx(0.5) and row["sample_rate"] == 16000
    assert len(set(t.column("speaker").to_pylist())) == 3


def test_voxceleb_bad_layout_reported(tmp_path):
    root = _vox(tmp_path / "vox", spk=1, ses=1, utts=2)
    write_wav(root / "stray.wav")
    problems = Problems()
    t = ingest.probe_rows(ingest.scan_voxceleb(str(root), problems), problems)
    assert t.num_rows == 2
    assert problems.counts() == {"bad_layout": 1}
    assert "stray.wav" in problems.summary_lines()[0]


def test_librispeech(tmp_path):
    for spk, chap in (("19", "198"), ("19", "227"), ("26", "495")):
        for u in range(3):
            write_wav(tmp_path / "ls" / spk / chap / f"{spk}-{chap}-{u:04d}.flac", seconds=0.3)
    problems = Problems()
    t = ingest.probe_rows(ingest.scan_librispeech(str(tmp_path / "ls"), problems), problems)
    assert t.num_rows == 9
    assert set(t.column("session_id").to_pylist()) == {"19/198", "19/227", "26/495"}
    assert "19-198-0000" in t.column("utt_id").to_pylist()


def test_kaldi_plain_and_segments(tmp_path):
    a = write_wav(tmp_path / "audio" / "rec1.wav", seconds=3.0)
    b = write_wav(tmp_path / "audio" / "rec2.wav", seconds=2.0)
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"rec1 {a}\nrec2 {b}\nrec3 sox x.wav -t wav - |\n")
    (d / "utt2spk").write_text("rec1 spkA\nrec2 spkB\n")
    problems = Problems()
    t = ingest.probe_rows(ingest.scan_kaldi(str(d), problems), problems)
    assert t.num_rows == 2 and t.column("speaker").to_pylist() == ["spkA", "spkB"]
    assert problems.counts() == {"bad_line": 1}
    assert (
        "piped commands" in problems.summary_lines()[0]
        and "wav.scp:3" in problems.summary_lines()[0]
    )

    (d / "wav.scp").write_text(f"rec1 {a}\nrec2 {b}\n")
    (d / "segments").write_text(
        "s1 rec1 0.0 1.5\ns2 rec1 1.5 3.0\ns3 rec2 0.2 1.2\ns4 rec2 1.0 9.0\ns5 recX 0 1\ns6 rec1 2 1\n"
    )
    (d / "utt2spk").write_text("s1 A\ns2 A\ns3 B\ns4 B\n")
    problems = Problems()
    t = ingest.probe_rows(ingest.scan_kaldi(str(d), problems), problems)
    assert t.column("utt_id").to_pylist() == ["s1", "s2", "s3"]
    assert t.column("duration_s").to_pylist() == pytest.approx([1.5, 1.5, 1.0])
    assert t.column("session_id").to_pylist() == ["rec1", "rec1", "rec2"]
    counts = problems.counts()
    assert counts == {"bad_line": 1, "bad_value": 2}, problems.summary_lines()
    text = " ".join(problems.summary_lines())
    assert "after the file's end" in text and "recX" in text and "start < end" in text


def test_kaldi_dir_without_wav_scp(tmp_path):
    with pytest.raises(ManifestError, match="no wav.scp"):
        list(ingest.scan_kaldi(str(tmp_path), Problems()))


def _dialogues_file(tmp_path, lines):
    p = tmp_path / "dlg.jsonl"
    p.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return str(p)


def test_dialogues_counts_and_short_dialogues(tmp_path):
    for i in range(6):
        write_wav(tmp_path / "a" / f"{i}.wav", seconds=0.4, seed=i)
    path = _dialogues_file(
        tmp_path,
        [
            {
                "dialogue_id": "d1",
                "utterances": ["a/0.wav", "a/1.wav", {"path": "a/2.wav", "speaker": "x"}],
            },
            {"dialogue_id": "d2", "utterances": ["a/3.wav", "a/4.wav"]},
            {"dialogue_id": "d3", "utterances": ["a/5.wav"]},
            {"dialogue_id": "d4", "utterances": ["a/missing.wav", "a/also_missing.wav"]},
            "{not json",
        ],
    )
    problems = Problems()
    utts = ingest.probe_rows(ingest.scan_dialogues(path, problems), problems)
    utts, dlg = ingest.build_dialogues(utts, problems)
    assert dlg.column("dialogue_id").to_pylist() == ["d1", "d2"]
    assert dlg.column("num_utts").to_pylist() == [3, 2]
    assert utts.num_rows == 6
    # The utterance of the too-short dialogue stays, without a dialogue.
    assert utts.filter(pa.compute.equal(utts["utt_id"], "a/5"))["dialogue_id"].to_pylist() == [None]
    assert problems.counts() == {"missing_file": 2, "bad_line": 1, "short_dialogue": 1}
    text = "\n".join(problems.summary_lines())
    assert "dialogue d3: has 1 usable utterance(s), needs at least 2" in text
    assert "missing.wav: file does not exist" in text and "dlg.jsonl:5: not valid JSON" in text


def test_dialogues_strict_stops_at_first_problem(tmp_path):
    write_wav(tmp_path / "a" / "0.wav")
    path = _dialogues_file(
        tmp_path, [{"dialogue_id": "d1", "utterances": ["a/0.wav", "a/nope.wav"]}]
    )
    problems = Problems(strict=True)
    with pytest.raises(ManifestError, match=r"nope.wav: file does not exist \(strict mode"):
        ingest.probe_rows(ingest.scan_dialogues(path, problems), problems)


def test_bad_audio_files_each_named(tmp_path):
    root = tmp_path / "vox"
    write_wav(root / "s" / "a" / "good.wav")
    (root / "s" / "a" / "junk.wav").write_bytes(b"RIFF....garbage" * 20)
    sf.write(str(root / "s" / "a" / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    nan = np.full(800, np.nan, dtype=np.float32)
    sf.write(str(root / "s" / "a" / "nan.wav"), nan, 16000, subtype="FLOAT")
    problems = Problems()
    t = ingest.probe_rows(ingest.scan_voxceleb(str(root), problems), problems, deep=True)
    assert t.column("utt_id").to_pylist() == ["s/a/good"]
    assert problems.counts() == {"unreadable_audio": 1, "empty_audio": 1, "bad_samples": 1}
    text = "\n".join(problems.summary_lines())
    assert (
        "junk.wav: unreadable audio" in text
        and "empty.wav: empty audio" in text
        and "nan.wav: NaN/inf sample at frame 0" in text
    )
    # Without --deep the header is fine, so the NaN file passes the header check.
    p2 = Problems()
    assert ingest.probe_rows(ingest.scan_voxceleb(str(root), p2), p2).num_rows == 2


def test_duplicate_utt_id(tmp_path):
    a = write_wav(tmp_path / "a.wav")
    b = write_wav(tmp_path / "b.wav")
    problems = Problems()
    t = ingest.probe_rows([ingest.Candidate("u1", a), ingest.Candidate("u1", b)], problems)
    assert t.num_rows == 1
    assert "utt_id 'u1' already used by" in problems.summary_lines()[0]


def _manifest(tmp_path, rows):
    p = str(tmp_path / "m.parquet")
    pq.write_table(pa.Table.from_pylist(rows), p)
    return p


def test_check_utterances_table_problems(tmp_path):
    base = {"path": "/x.wav", "duration_s": 1.0, "sample_rate": 16000}
    rows = [
        {"utt_id": "a", **base},
        {"utt_id": "a", **base},
        {"utt_id": "b", **base, "duration_s": float("nan")},
        {"utt_id": "c", **base, "sample_rate": 0},
        {"utt_id": "d", **base},
    ]
    problems = Problems()
    t = ingest.check_utterances(fs.read_table(_manifest(tmp_path, rows)), "m.parquet", problems)
    assert t.column("utt_id").to_pylist() == ["a", "d"]
    text = "\n".join(problems.summary_lines())
    assert "m.parquet row 1: utt_id 'a' appears more than once" in text
    assert "m.parquet row 2: duration_s must be > 0, got nan" in text
    assert "sample_rate must be > 0" in text


def test_missing_columns_and_empty_manifest(tmp_path):
    p = _manifest(tmp_path, [{"utt_id": "a", "path": "/x.wav"}])
    with pytest.raises(
        ManifestError,
        match="m.parquet: utterances table is missing column.s. duration_s, sample_rate",
    ):
        ingest.check_utterances(fs.read_table(p), p, Problems())
    empty = write_empty_manifest(tmp_path / "e.parquet")
    with pytest.raises(ManifestError, match="e.parquet: the utterances manifest is empty"):
        ingest.check_utterances(fs.read_table(empty), empty, Problems())
    with pytest.raises(ManifestError, match="no such file"):
        fs.read_table(str(tmp_path / "nope.parquet"))
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ManifestError, match="cannot read as Parquet"):
        fs.read_table(str(bad))


def test_trials_both_forms_and_unknown_files(tmp_path):
    root = _vox(tmp_path / "vox", spk=2, ses=1, utts=2)
    problems = Problems()
    utts = ingest.probe_rows(ingest.scan_voxceleb(str(root), problems), problems)
    vox = tmp_path / "t.txt"
    vox.write_text(
        "1 id0/ses0/00000.wav id0/ses0/00001.wav\n0 id0/ses0/00000.wav id1/ses0/00000.wav\n"
        "1 id0/ses0/00000.wav id9/ses0/00000.wav\nbroken line\n"
    )
    t = resolve_trials(parse_trials(str(vox), problems), utts, str(vox), problems)
    assert t.num_rows == 2 and t.column("enroll").to_pylist() == ["id0/ses0/00000"] * 2
    assert problems.counts() == {"bad_line": 1, "unknown_trial_file": 1}
    assert "id9/ses0/00000.wav not in the manifest" in "\n".join(problems.summary_lines())
    kaldi = tmp_path / "k.txt"
    kaldi.write_text(
        "id0/ses0/00000 id0/ses0/00001 target\nid0/ses0/00000 id1/ses0/00001 nontarget\n"
    )
    k = resolve_trials(parse_trials(str(kaldi), Problems()), utts, str(kaldi), Problems())
    assert k.column("label").to_pylist() == [1, 0]
    allbad = tmp_path / "x.txt"
    allbad.write_text("1 zz.wav yy.wav\n")
    with pytest.raises(ManifestError, match="none of the 1 trials name files in the manifest"):
        resolve_trials(parse_trials(str(allbad), Problems()), utts, str(allbad), Problems())


def test_cli_ingest_voxceleb_and_dialogues(tmp_path, capsys):
    root = _vox(tmp_path / "vox")
    code, out, _ = _run(
        ["ingest", "voxceleb", str(root), "--out", str(tmp_path / "u.parquet"), "--json"], capsys
    )
    s = json.loads(out)
    assert code == 0 and s["rows"] == 12 and s["speakers"] == 3
    assert pq.read_table(tmp_path / "u.parquet").num_rows == 12

    write_wav(tmp_path / "d" / "0.wav")
    write_wav(tmp_path / "d" / "1.wav")
    path = _dialogues_file(
        tmp_path, [{"dialogue_id": "d1", "utterances": ["d/0.wav", "d/1.wav", "d/gone.wav"]}]
    )
    code, out, _ = _run(
        ["ingest", "dialogues", path, "--out", str(tmp_path / "du.parquet")], capsys
    )
    assert code == 0
    assert "wrote 2 rows" in out and "1 dialogues" in out and "gone.wav: file does not exist" in out
    assert os.path.isfile(tmp_path / "du.skipped.jsonl")
    code, _, err = _run(
        ["ingest", "dialogues", path, "--out", str(tmp_path / "s.parquet"), "--strict"], capsys
    )
    assert code == 2 and "gone.wav: file does not exist" in err and "Traceback" not in err


def test_cli_ingest_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(
        ["ingest", "voxceleb", str(tmp_path / "empty"), "--out", str(tmp_path / "o.parquet")],
        capsys,
    )
    assert code == 2 and "no usable audio found" in err
    code, _, err = _run(
        ["ingest", "voxceleb", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o.parquet")],
        capsys,
    )
    assert code == 2 and "nowhere: not a folder" in err


def test_cli_validate(tmp_path, capsys):
    root = _vox(tmp_path / "vox", spk=2, ses=1, utts=2)
    man = str(tmp_path / "u.parquet")
    assert main(["ingest", "voxceleb", str(root), "--out", man, "-q"]) == 0
    capsys.readouterr()
    assert _run(["validate", "--utterances", man, "--check-audio"], capsys)[0] == 0
    os.remove(root / "id1" / "ses0" / "00001.wav")
    code, out, _ = _run(["validate", "--utterances", man, "--check-audio"], capsys)
    assert (
        code == 1  # problems found: not 0, which scripts read as "all good"
        and out.startswith("PROBLEMS FOUND: 3 valid")
        and "00001.wav: file does not exist" in out
    )
    dlg = tmp_path / "d.parquet"
    pq.write_table(pa.table({"dialogue_id": ["x"], "utt_ids": [["id0/ses0/00000"]]}), dlg)
    code, out, _ = _run(
        ["validate", "--utterances", man, "--dialogues", str(dlg), "--json"], capsys
    )
    assert code == 1 and json.loads(out)["skipped"] == {"short_dialogue": 1}


def test_walk_streams_a_large_folder(tmp_path):
    """10k header-less candidates stream through the walker without reading audio."""
    root = tmp_path / "big"
    for s in range(100):
        d = root / f"s{s}" / "x"
        d.mkdir(parents=True)
        for u in range(100):
            (d / f"{u}.wav").touch()
    gen = ingest.scan_voxceleb(str(root), Problems())
    first = next(gen)  # a generator: the first row comes before the walk ends
    assert first.utt_id == "s0/x/0"
    assert sum(1 for _ in gen) == 9999


def test_kaldi_relative_paths_work_from_any_folder(tmp_path, monkeypatch, capsys):
    """A Kaldi recipe's wav.scp names audio relative to the recipe root (where its
    scripts run); the manifest stores absolute paths and says which base it used."""
    recipe = tmp_path / "s5"
    write_wav(recipe / "wavs" / "r1.wav", seconds=0.5)
    write_wav(recipe / "wavs" / "r2.wav", seconds=0.5)
    d = recipe / "data" / "train"
    d.mkdir(parents=True)
    (d / "wav.scp").write_text("r1 wavs/r1.wav\nr2 wavs/r2.wav\nr1 wavs/r2.wav\n")
    (d / "utt2spk").write_text("r1 A\nr2 B\n")
    monkeypatch.chdir(recipe)
    out = str(tmp_path / "m.parquet")
    assert main(["ingest", "kaldi", "data/train", "--out", out, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["relative_paths_base"] == str(recipe) and s["relative_paths"] == 2
    # the duplicate recording id: its first line kept, the second reported
    assert s["skipped"] == {"duplicate_utt_id": 1}
    assert "wav.scp:3" in s["problems"][0] and "line 1" in s["problems"][0]
    paths = pq.read_table(out).column("path").to_pylist()
    assert paths == [str(recipe / "wavs" / "r1.wav"), str(recipe / "wavs" / "r2.wav")]
    # relative to the data dir when they exist there; --wav-root decides when given
    (d / "wav.scp").write_text("r1 ../../wavs/r1.wav\n")
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "kaldi", str(d), "--out", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["relative_paths_base"] == str(d)
    (d / "wav.scp").write_text("r1 r1.wav\n")
    argv = ["ingest", "kaldi", str(d), "--out", out, "--wav-root", str(recipe / "wavs")]
    assert main([*argv, "--json"]) == 0
    capsys.readouterr()
    assert pq.read_table(out).column("path").to_pylist() == [str(recipe / "wavs" / "r1.wav")]


def test_dialogue_lines_that_would_merge_or_hold_wrong_types_are_reported(tmp_path):
    for i in range(4):
        write_wav(tmp_path / "a" / f"{i}.wav", seconds=0.5)
    jl = tmp_path / "d.jsonl"
    jl.write_text(
        '{"dialogue_id": "d1", "utterances": ["a/0.wav", "a/1.wav"]}\n'
        '{"dialogue_id": "d1", "utterances": ["a/2.wav"]}\n'
        '{"dialogue_id": ["x"], "utterances": ["a/3.wav"]}\n'
        '{"dialogue_id": 7, "utterances": [{"path": "a/3.wav", "speaker": {"n": 1}}]}\n'
        '{"dialogue_id": 8, "utterances": [{"path": "a/2.wav", "speaker": 12}]}\n'
    )
    problems = Problems()
    got = list(ingest.scan_dialogues(str(jl), problems))
    assert [(c.dialogue_id, os.path.basename(c.path), c.speaker) for c in got] == [
        ("d1", "0.wav", None),
        ("d1", "1.wav", None),
        ("8", "2.wav", "12"),
    ]
    lines = [str(p) for p in problems.items]
    assert "d.jsonl:2: dialogue 'd1' already given on line 1" in lines[0]
    assert "d.jsonl:3: dialogue_id must be a string" in lines[1]
    assert "d.jsonl:4: speaker must be a string" in lines[2] and len(lines) == 3
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b'{"dialogue_id": "d1"}\n\xff\xfe\x00binary')
    with pytest.raises(ManifestError, match=r"b.jsonl: not UTF-8 text \(byte 22, line 2\)"):
        list(ingest.scan_dialogues(str(binary), Problems()))
