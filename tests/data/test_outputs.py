"""Output folders are written whole or not at all, read only as listed, and never
replace what raysv did not write: the real CLI on real files and a local Ray."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysv.cli import main
from raysv.data import outputs
from raysv.data.corpus import prepare_corpus
from raysv.errors import OutputError
from tests.clustering.test_kmeans import _write_shards


def _snapshot(folder) -> dict:
    return {
        os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
        for d, _, names in os.walk(folder)
        for n in names
    }


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_embed_refuses_an_out_holding_files_it_did_not_write(tiny_corpus, tmp_path, capsys):
    man, _ = prepare_corpus(tiny_corpus, str(tmp_path / "m"))
    before = _snapshot(tmp_path / "m")
    # --out is the folder of its own input manifest: refused before any work, nothing lost
    argv = ["embed", "--manifest", man.utterances, "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    _one_line_error(capsys, str(tmp_path / "m"), "did not write", "never deletes")
    assert _snapshot(tmp_path / "m") == before
    # so is --average-sessions pointing at --out
    argv = ["embed", "--manifest", man.utterances, "--out", str(tmp_path / "e")]
    assert main([*argv, "--average-sessions", str(tmp_path / "e")]) == 2
    _one_line_error(capsys, "is the --out folder")
    # and a file where the folder should go
    (tmp_path / "afile").write_text("mine")
    assert main(["embed", "--manifest", man.utterances, "--out", str(tmp_path / "afile")]) == 2
    _one_line_error(capsys, "not a folder")
    assert (tmp_path / "afile").read_text() == "mine"


def test_embed_twice_replaces_its_own_output_whole(tiny_corpus, tmp_path, ray_local, capsys):
    man, _ = prepare_corpus(tiny_corpus, str(tmp_path / "m"))
    out = tmp_path / "emb"
    argv = ["embed", "--manifest", man.utterances, "--out", str(out), "--json"]
    assert main(argv) == 0
    first = outputs.read_marker(str(out))
    assert first["format"] == outputs.FORMAT and first["command"] == "raysv embed"
    assert sorted(first["parts"]) == sorted(n for n in os.listdir(out) if n.endswith(".parquet"))
    n = pq.read_metadata(man.utterances).num_rows
    assert first["rows"] == n
    old_files = {os.stat(out / p).st_ino for p in first["parts"]}
    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    second = outputs.read_marker(str(out))
    # the old parts are gone: every part is a file the second run wrote (parts are named by
    # write task, so the names repeat; the files do not), and no hidden siblings stay
    assert not {os.stat(out / p).st_ino for p in second["parts"]} & old_files
    assert sorted(os.listdir(out)) == sorted([*second["parts"], "_SUCCESS"])
    assert [p for p in os.listdir(tmp_path) if p.startswith(".emb")] == []
    assert pq.read_table(str(out)).num_rows == n


def _labels_rows(folder) -> int:
    from raysv.data import fs

    return fs.read_table(str(folder), ["utt_id"]).num_rows


def test_cluster_reads_only_complete_embeddings_and_leaves_no_stale_parts(
    tmp_path, ray_local, capsys
):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((28, 8)).astype(np.float32)
    emb = _write_shards(x, str(tmp_path / "emb"), parts=4)
    out = tmp_path / "labels"
    args = ["cluster", "--embeddings", emb, "--out", str(out), "--k", "3", "--no-tracking"]
    # two parts written, no marker: refused, naming the folder (not half the data clustered)
    half = tmp_path / "half"
    half.mkdir()
    for p in ("p0.parquet", "p1.parquet"):
        shutil.copy(os.path.join(emb, p), half / p)
    assert main([*args[:2], str(half), *args[3:]]) == 2
    _one_line_error(capsys, str(half), "no _SUCCESS marker")
    assert not out.exists()
    # 2 shards, then 1, into the same --out: 28 rows, never 42
    assert main([*args, "--shards", "2"]) == 0
    assert main([*args, "--shards", "1"]) == 0
    capsys.readouterr()
    assert _labels_rows(out) == 28
    assert len(outputs.read_marker(str(out))["parts"]) == 1
    # a part its marker lists went missing: refused by the reader
    os.remove(out / outputs.read_marker(str(out))["parts"][0])
    with pytest.raises(OutputError, match="missing"):
        _labels_rows(out)


def test_a_command_never_replaces_another_commands_output(tmp_path, ray_local, capsys):
    """``raysv cluster --out`` pointed at the embeddings it reads (or any output of
    another raysv command) is refused in one line; the embeddings stay whole."""
    rng = np.random.default_rng(1)
    emb = _write_shards(rng.standard_normal((20, 8)).astype(np.float32), str(tmp_path / "e"))
    staged_emb = str(tmp_path / "emb")
    with outputs.staged(staged_emb, "raysv embed") as tmp:
        for name in sorted(os.listdir(emb)):
            shutil.copy(os.path.join(emb, name), os.path.join(tmp, name))
        outputs.commit(tmp, staged_emb, "raysv embed", 20)
    before = sorted(os.listdir(staged_emb))
    argv = ["cluster", "--embeddings", staged_emb, "--out", staged_emb, "--k", "3"]
    assert main([*argv, "--no-tracking"]) == 2
    _one_line_error(capsys, staged_emb, "holds the output of raysv embed")
    assert sorted(os.listdir(staged_emb)) == before
    with pytest.raises(OutputError, match="raysv embed --average-sessions replaces only"):
        outputs.check_out(staged_emb, "raysv embed --average-sessions")
    outputs.check_out(staged_emb, "raysv embed")  # its own: replaced on a rerun


def test_old_and_foreign_markers(tmp_path):
    folder = tmp_path / "old"
    _write_shards(np.zeros((4, 2), np.float32), str(folder), parts=2)
    (folder / "_SUCCESS").write_text("4\n")  # what raysv wrote before the format existed
    with pytest.raises(OutputError, match="older raysv or another tool.*new folder"):
        outputs.parts(str(folder))
    (folder / "_SUCCESS").write_text("")  # Spark's: complete, parts not listed
    assert [os.path.basename(p) for p in outputs.parts(str(folder))] == ["p0.parquet", "p1.parquet"]
    with pytest.raises(OutputError, match="did not write"):
        outputs.check_out(str(folder), "raysv cluster")


def test_a_damaged_summary_is_one_line_not_a_traceback(tmp_path):
    from raysv.errors import ManifestError

    p = tmp_path / "summary.json"
    p.write_text('{"rounds": [1, ')  # cut short by a kill (of an older raysv)
    with pytest.raises(ManifestError, match="damaged.*delete it to redo"):
        outputs.read_json(str(p))
    outputs.write_json_atomic(str(p), {"rounds": [1, 2]})
    assert json.loads(p.read_text()) == {"rounds": [1, 2]}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_synth_force_replaces_only_a_corpus_synth_wrote(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    small = ["--set", "train_speakers=2", "--set", "dev_speakers=2", "--set", "test_speakers=2"]
    small += ["--set", "utts_per_speaker=3", "--set", "trials_per_split=4", "--set", "workers=1"]
    assert main(["synth", "--out", str(mine), *small, "--force"]) == 2
    _one_line_error(capsys, "not a corpus raysv synth wrote")
    assert os.listdir(mine) == ["notes.txt"]
    corpus = tmp_path / "c"
    assert main(["synth", "--out", str(corpus), *small, "--set", "utts_per_speaker=5"]) == 0
    (corpus / "README.user").write_text("kept")
    old = {p for p in _snapshot(corpus) if p.startswith("wav")}
    assert main(["synth", "--out", str(corpus), *small, "--set", "seed=9", "--force"]) == 0
    new = {p for p in _snapshot(corpus) if p.startswith("wav")}
    assert new and old - new  # the old corpus's utterances did not survive
    assert len(new) == 6 * 3  # 6 speakers x 3 utterances: only the new corpus
    assert (corpus / "README.user").read_text() == "kept"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


# ---------------------------------------------------------------- kills
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kill_when(argv: list[str], ready, timeout: float = 300) -> None:
    """Run the CLI in its own process group and SIGKILL it (driver, local Ray and
    workers) once ``ready()`` holds."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "raysv.cli", *argv],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "never reached the point to kill at"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _staging(parent, name):
    import glob

    return glob.glob(os.path.join(str(parent), f".{name}.tmp-*"))


@pytest.mark.slow
def test_killed_embed_and_cluster_leave_the_old_output_and_a_rerun_ends_whole(
    tiny_corpus, tmp_path, ray_local, capsys
):
    man, _ = prepare_corpus(tiny_corpus, str(tmp_path / "m"))
    n = pq.read_metadata(man.utterances).num_rows
    (tmp_path / "mine.txt").write_text("not raysv's")
    emb, labels = tmp_path / "emb", tmp_path / "labels"
    embed = ["embed", "--manifest", man.utterances, "--out", str(emb)]
    cluster = ["cluster", "--embeddings", str(emb), "--out", str(labels), "--k", "4"]
    cluster += ["--no-tracking"]
    # killed while writing its first output: nothing at --out
    _kill_when(embed, lambda: bool(_staging(tmp_path, "emb")))
    assert not emb.exists()
    assert main(embed) == 0
    assert main(cluster) == 0
    capsys.readouterr()
    done = {f: _snapshot(f) for f in (emb, labels)}
    # killed while replacing it: the old complete output is untouched
    _kill_when([*embed, "--force"], lambda: bool(_staging(tmp_path, "emb")))
    _kill_when(cluster, lambda: bool(_staging(tmp_path, "labels")))
    assert {f: _snapshot(f) for f in (emb, labels)} == done
    # reruns end whole: every utterance once, no stale part, no staging left
    assert main([*embed, "--force"]) == 0
    assert main(cluster) == 0
    capsys.readouterr()
    for folder in (emb, labels):
        ids = pq.ParquetDataset(outputs.parts(str(folder))).read(["utt_id"])["utt_id"]
        assert len(ids) == n == len(set(ids.to_pylist()))
        assert not _staging(tmp_path, folder.name)
    assert (tmp_path / "mine.txt").read_text() == "not raysv's"


def _table(n: int, start: int = 0):
    import pyarrow as pa

    return pa.table({"utt_id": [f"u{i}" for i in range(start, start + n)]})


def test_readers_take_only_the_listed_parts_through_pyarrow_fs(tmp_path):
    """The marker logic reads through pyarrow.fs (the code object stores use): a part
    a killed writer left unlisted is ignored; a listed part that is missing, a part
    name that leaves the folder, and a folder without a marker are refused."""
    from raysv.data import fs

    d = tmp_path / "emb"
    d.mkdir()
    pq.write_table(_table(3), d / "part-0.parquet")
    pq.write_table(_table(2, 3), d / "part-1.parquet")
    pq.write_table(_table(5, 100), d / "part-9.parquet")  # a killed writer's, not listed
    with pytest.raises(OutputError, match="no _SUCCESS marker"):
        fs.read_table(str(d))
    marker = {"format": outputs.FORMAT, "command": "t", "rows": 5}
    (d / "_SUCCESS").write_text(
        json.dumps({**marker, "parts": ["part-0.parquet", "part-1.parquet"]})
    )
    uri = "file://" + str(d)
    assert [os.path.basename(p) for p in fs.parquet_files(uri)] == [
        "part-0.parquet",
        "part-1.parquet",
    ]
    assert fs.read_table(uri).column("utt_id").to_pylist() == [f"u{i}" for i in range(5)]
    (d / "_SUCCESS").write_text(json.dumps({**marker, "parts": ["../x.parquet"]}))
    with pytest.raises(OutputError, match="not a file name"):
        fs.read_table(str(d))
    (d / "_SUCCESS").write_text(
        json.dumps({**marker, "parts": ["part-0.parquet", "part-7.parquet"]})
    )
    with pytest.raises(OutputError, match="missing.*part-7.parquet"):
        fs.read_table(str(d))
    (d / "_SUCCESS").write_text("")  # another tool's: every .parquet file
    assert len(fs.read_table(str(d))) == 10


def test_run_folders_carry_a_format_and_foreign_ones_are_refused(tmp_path, capsys):
    """A run folder is claimed with its format; resuming checks it; a folder of
    another format, or holding files and no marker, is refused in one line through
    the real CLI, and nothing in it is touched."""
    run = tmp_path / "run"
    assert outputs.claim_run(str(run), "raysv iterate") == str(run)
    assert json.loads((run / outputs.RUN_MARKER).read_text())["format"] == outputs.RUN_FORMAT
    outputs.claim_run(str(run), "raysv iterate")  # ours: resumed
    (run / outputs.RUN_MARKER).write_text(json.dumps({"format": "raysv-run/0"}))
    with pytest.raises(OutputError, match="raysv-run/0.*new --out"):
        outputs.claim_run(str(run), "raysv iterate")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code = main(["demo", "--out", str(foreign)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "notes.txt" in err and outputs.RUN_MARKER in err
    assert sorted(os.listdir(foreign)) == ["notes.txt"]


def test_a_kill_between_commits_renames_loses_nothing(tmp_path):
    """commit() renames the earlier output aside, then the new one into place: a kill
    between the two leaves no out, the old output hidden and the new one staged. The
    next run of the command puts the old complete output back before anything else,
    and removes the half-done sibling; a reader then sees the old output whole."""
    from raysv.data import fs

    out = str(tmp_path / "labels")
    with outputs.staged(out, "raysv cluster") as tmp:
        pq.write_table(_table(3), os.path.join(tmp, "part-0.parquet"))
        outputs.commit(tmp, out, "raysv cluster", 3)
    old = str(tmp_path / ".labels.old-deadbeef")
    os.rename(out, old)  # commit's first rename ... and the kill
    half = tmp_path / ".labels.tmp-cafe0000"
    half.mkdir()
    pq.write_table(_table(5, 10), half / "part-0.parquet")
    assert not os.path.exists(out)
    with pytest.raises(RuntimeError), outputs.staged(out, "raysv cluster"):
        raise RuntimeError("this run fails too")
    assert sorted(os.listdir(tmp_path)) == ["labels"]
    assert fs.read_table(out).column("utt_id").to_pylist() == ["u0", "u1", "u2"]


def _write_output(out: str, command: str, ids: list[str]) -> None:
    with outputs.staged(out, command) as tmp:
        pq.write_table(pa.table({"utt_id": ids}), os.path.join(tmp, "part-0.parquet"))
        with open(os.path.join(tmp, "_skipped-1.jsonl"), "w") as f:
            f.write("{}\n")
        outputs.commit(tmp, out, command, len(ids))


def test_a_users_file_inside_an_earlier_output_is_never_deleted(tmp_path, monkeypatch):
    """Replacing an earlier output deletes only what that output's marker accounts for
    (its files, its _* records): a user's file, or another output put inside it, makes
    the rerun refuse in one line, and both stay. file:// URIs name the same folder;
    the current folder can't be an output (it is replaced whole)."""
    out = str(tmp_path / "emb")
    _write_output(out, "raysv embed", ["a", "b"])
    assert outputs.read_marker(out)["files"] == ["part-0.parquet"]
    _write_output(out, "raysv embed", ["c"])  # its own output: replaced whole
    assert pq.read_table(os.path.join(out, "part-0.parquet")).column("utt_id").to_pylist() == ["c"]
    (tmp_path / "emb" / "notes.txt").write_text("mine")
    _write_output(str(tmp_path / "emb" / "labels"), "raysv cluster", ["x"])
    with pytest.raises(OutputError, match=r"holds 2 file\(s\) raysv embed did not write.*labels"):
        _write_output(out, "raysv embed", ["d"])
    assert (tmp_path / "emb" / "notes.txt").read_text() == "mine"
    assert outputs.complete(str(tmp_path / "emb" / "labels"))
    assert pq.read_table(os.path.join(out, "part-0.parquet")).column("utt_id").to_pylist() == ["c"]

    uri = f"file://{tmp_path / 'viaurl'}"
    _write_output(uri, "raysv embed", ["u"])
    assert outputs.complete(uri) and outputs.complete(str(tmp_path / "viaurl"))
    assert not os.path.exists("file:")  # nothing under the current folder

    monkeypatch.chdir(tmp_path / "viaurl")
    with pytest.raises(OutputError, match="can't be the current folder"):
        _write_output(".", "raysv embed", ["v"])
    assert outputs.complete(str(tmp_path / "viaurl"))
