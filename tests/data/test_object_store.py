"""Output folders on an object store: raysv's readers against a real S3-protocol server.

moto's server runs on 127.0.0.1 in this process; raysv reaches it only through
pyarrow's S3 file system (the endpoint and keys from the environment), boto3
only puts the folders there and lists what is there. Commands that use Ray run
as the real CLI in a subprocess with its own local Ray, so that its workers
see the endpoint too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysv.cli import main
from raysv.data import fs, outputs
from raysv.data.corpus import prepare_corpus
from raysv.errors import ManifestError, OutputError
from tests.conftest import cli_json, write_wav

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "bucket"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with one bucket; this process's environment points
    pyarrow at it while the module runs. Yields ``endpoint``, ``env`` (for the CLI in a
    subprocess: no RAY_ADDRESS, so it starts its own Ray), ``client`` (boto3),
    ``upload(folder, prefix)`` and ``keys(prefix)``."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")  # no user's ~/.aws config
    aws = {
        "AWS_ENDPOINT_URL": endpoint,  # read by pyarrow >= 15 (and boto3)
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for anything
        "AWS_CONFIG_FILE": nowhere,
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    drop = {"RAY_ADDRESS", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"}
    env = {k: v for k, v in os.environ.items() if k not in drop} | aws
    mp = pytest.MonkeyPatch()
    for k in drop:
        mp.delenv(k, raising=False)
    for k, v in aws.items():
        mp.setenv(k, v)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)

    def upload(folder: str, prefix: str) -> str:
        """Put every file of local ``folder`` under ``prefix``; returns its s3:// URI."""
        for name in sorted(os.listdir(folder)):
            client.upload_file(os.path.join(folder, name), BUCKET, f"{prefix}/{name}")
        return f"s3://{BUCKET}/{prefix}"

    def keys(prefix: str) -> list[str]:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    try:
        yield SimpleNamespace(endpoint=endpoint, env=env, client=client, upload=upload, keys=keys)
    finally:
        mp.undo()
        server.stop()


def _ids(start: int, n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i}" for i in range(start, start + n)]


def _part(path, ids: list[str]) -> None:
    pq.write_table(pa.table({"utt_id": ids, "x": np.arange(len(ids), dtype=np.int64)}), path)


def _complete_output(tmp_path, name: str) -> str:
    """A complete output folder written the way raysv's commands write one: two parts
    (u0-u2, u3-u4), staged, then committed with its _SUCCESS marker."""
    out = str(tmp_path / name)
    with outputs.staged(out, "raysv embed") as tmp:
        _part(os.path.join(tmp, "part-0.parquet"), _ids(0, 3))
        _part(os.path.join(tmp, "part-1.parquet"), _ids(3, 2))
        outputs.commit(tmp, out, "raysv embed", 5)
    return out


def test_readers_take_only_the_listed_parts_from_s3(s3, tmp_path):
    local = _complete_output(tmp_path, "emb")
    uri = s3.upload(local, "t1/emb")
    leftover = tmp_path / "part-9.parquet"  # a killed writer's part, not listed
    _part(leftover, _ids(100, 4))
    s3.client.upload_file(str(leftover), BUCKET, "t1/emb/part-9.parquet")
    names = ("_SUCCESS", "part-0.parquet", "part-1.parquet", "part-9.parquet")
    assert s3.keys("t1/emb/") == [f"t1/emb/{n}" for n in names]
    listed = [f"{uri}/part-0.parquet", f"{uri}/part-1.parquet"]
    assert outputs.read_marker(uri)["parts"] == ["part-0.parquet", "part-1.parquet"]
    assert outputs.parts(uri) == listed
    assert outputs.parts(uri + "/") == listed  # as users often write a folder
    assert fs.parquet_files(uri) == listed
    assert fs.read_table(uri).column("utt_id").to_pylist() == _ids(0, 5)
    assert fs.read_table(uri + "/", ["utt_id"]).column("utt_id").to_pylist() == _ids(0, 5)
    # a single part is read as a file
    assert fs.read_table(listed[1]).column("utt_id").to_pylist() == _ids(3, 2)

    # parts but no marker (a writer still at work, or killed): refused, naming the folder
    for name in ("part-0.parquet", "part-1.parquet"):
        s3.client.upload_file(os.path.join(local, name), BUCKET, f"t1/half/{name}")
    half = f"s3://{BUCKET}/t1/half"
    with pytest.raises(OutputError, match=re.escape(half) + ": no _SUCCESS marker"):
        outputs.parts(half)
    with pytest.raises(OutputError, match=re.escape(half) + ": no _SUCCESS marker"):
        fs.read_table(half)

    # a part the marker lists is missing: refused, naming the folder and the part
    for name in ("_SUCCESS", "part-0.parquet"):
        s3.client.upload_file(os.path.join(local, name), BUCKET, f"t1/cut/{name}")
    cut = f"s3://{BUCKET}/t1/cut"
    with pytest.raises(OutputError, match=re.escape(cut) + ": 1 part.*missing.*part-1.parquet"):
        fs.read_table(cut)

    # another tool's folder (Spark: an empty _SUCCESS, checksum files): every .parquet
    s3.client.put_object(Bucket=BUCKET, Key="t1/spark/_SUCCESS", Body=b"")
    s3.client.put_object(Bucket=BUCKET, Key="t1/spark/.part-0.parquet.crc", Body=b"crc")
    for name in ("part-0.parquet", "part-1.parquet"):
        s3.client.upload_file(os.path.join(local, name), BUCKET, f"t1/spark/{name}")
    s3.client.upload_file(str(leftover), BUCKET, "t1/spark/part-9.parquet")
    spark = f"s3://{BUCKET}/t1/spark"
    assert outputs.read_marker(spark) == {}
    assert outputs.parts(spark) == [f"{spark}/part-{i}.parquet" for i in (0, 1, 9)]
    assert sorted(fs.read_table(spark).column("utt_id").to_pylist()) == sorted(
        _ids(0, 5) + _ids(100, 4)
    )

    # nothing there at all
    with pytest.raises(ManifestError, match=re.escape(f"s3://{BUCKET}/t1/none") + ": no such"):
        fs.read_table(f"s3://{BUCKET}/t1/none")


# ---------------------------------------------------------------- the real CLI on S3
def _cli(s3, cwd, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m raysv.cli ...`` with the S3 environment (plus ``env``) and a local Ray
    of its own."""
    return subprocess.run(
        [sys.executable, "-m", "raysv.cli", *argv],
        cwd=cwd,
        env={
            **s3.env,
            "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, s3.env.get("PYTHONPATH")])),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def embedded(s3, tiny_corpus, tmp_path_factory):
    """The tiny corpus embedded by ``raysv embed`` reading its manifest from S3 (into a
    local folder), and that folder put at s3://bucket/emb with a part its marker does
    not list (utt_ids ``leftover-*``, as a killed writer would leave)."""
    tmp = tmp_path_factory.mktemp("embedded")
    man, _ = prepare_corpus(tiny_corpus, str(tmp / "m"))
    s3.client.upload_file(man.utterances, BUCKET, "man/utterances.parquet")
    local = str(tmp / "emb")
    argv = ["embed", "--manifest", f"s3://{BUCKET}/man/utterances.parquet", "--out", local]
    done = _cli(s3, tmp, *argv, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    uri = s3.upload(local, "emb")
    first = pq.read_table(os.path.join(local, outputs.read_marker(local)["parts"][0]))
    ids = pa.array([f"leftover-{i}" for i in range(first.num_rows)])
    pq.write_table(first.set_column(0, "utt_id", ids), str(tmp / "zz-leftover.parquet"))
    s3.client.upload_file(str(tmp / "zz-leftover.parquet"), BUCKET, "emb/zz-leftover.parquet")
    return SimpleNamespace(
        manifest=man.utterances, local=local, uri=uri, summary=cli_json(done.stdout)
    )


def test_embed_reads_its_manifest_from_s3(embedded):
    """Ray Data reads the manifest through pyarrow's S3 file system: every utterance once."""
    want = pq.read_table(embedded.manifest, columns=["utt_id"]).column("utt_id").to_pylist()
    got = fs.read_table(embedded.local, ["utt_id"]).column("utt_id").to_pylist()
    assert sorted(got) == sorted(want) and embedded.summary["rows"] == len(want)


def _labels(folder: str) -> dict:
    t = fs.read_table(folder).sort_by("utt_id")
    return {c: t.column(c).to_pylist() for c in t.column_names}


def test_cluster_on_s3_embeddings_equals_the_local_copy(s3, embedded, tmp_path, ray_local, capsys):
    """``raysv cluster --embeddings s3://...`` (its Ray actors read the listed parts from
    S3) writes the same pseudo labels as on the local copy, and none of the unlisted part."""
    args = ["--k", "4", "--shards", "2", "--seed", "3", "--no-tracking", "--json"]
    done = _cli(s3, tmp_path, "cluster", "--embeddings", embedded.uri, "--out", "s3labels", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = cli_json(done.stdout)
    argv = ["cluster", "--embeddings", embedded.local, "--out", str(tmp_path / "labels"), *args]
    assert main(argv) == 0
    local = cli_json(capsys.readouterr().out)
    n = embedded.summary["rows"]
    assert remote["embeddings"] == local["embeddings"] == n
    assert remote["objective"] == pytest.approx(local["objective"], rel=1e-5)
    got, want = _labels(str(tmp_path / "s3labels")), _labels(str(tmp_path / "labels"))
    ids = fs.read_table(embedded.local, ["utt_id"]).column("utt_id").to_pylist()
    assert got["utt_id"] == want["utt_id"] == sorted(ids)
    assert not [u for u in got["utt_id"] if u.startswith("leftover-")]
    assert got["cluster"] == want["cluster"] and got["kept"] == want["kept"]
    assert len(set(got["cluster"])) == 4
    np.testing.assert_allclose(got["distance"], want["distance"], rtol=1e-5, atol=1e-6)


def _writers(s3, prefix: str) -> list[str]:
    """The writer prefixes ``w-<id>`` under ``prefix``."""
    names = {k[len(prefix) + 1 :].split("/")[0] for k in s3.keys(f"{prefix}/")}
    return sorted(n for n in names if n.startswith("w-"))


@pytest.mark.slow  # ~2.5 min on 2 cores: in .ci/run's second step
def test_embed_and_cluster_write_their_outputs_to_s3(s3, embedded, tmp_path):
    """``raysv embed --out s3://`` (and ``--average-sessions s3://``), then ``raysv
    cluster --out s3://``: readers get exactly the rows of the local runs; a rerun
    replaces the earlier output (its objects deleted once the new marker is there);
    the records the summaries name sit at the output's top."""
    man = f"s3://{BUCKET}/man/utterances.parquet"
    out, avg = f"s3://{BUCKET}/w/emb", f"s3://{BUCKET}/w/sess"
    done = _cli(s3, tmp_path, "embed", "--manifest", man, "--out", out, "--average-sessions", avg)
    assert done.returncode == 0, done.stderr[-3000:]
    want = sorted(fs.read_table(embedded.local, ["utt_id"]).column("utt_id").to_pylist())
    assert sorted(fs.read_table(out, ["utt_id"]).column("utt_id").to_pylist()) == want
    first = _writers(s3, "w/emb")
    assert len(first) == 1
    marker = outputs.read_marker(out)
    assert marker["rows"] == len(want) and marker["parts"]
    assert all(p.startswith(first[0] + "/") for p in marker["parts"])
    sessions = fs.read_table(avg)
    local_man = pq.read_table(embedded.manifest, columns=["utt_id", "session_id"]).to_pylist()
    n_sessions = len({r["session_id"] or r["utt_id"] for r in local_man})
    assert sessions.num_rows == n_sessions and sum(sessions["n_utts"].to_pylist()) == len(want)
    assert os.listdir(tmp_path) == []  # nothing local: no folder called "s3:"
    assert len(_writers(s3, "w/sess")) == 1

    # a rerun (--force) writes a new writer prefix and deletes the old one
    done = _cli(s3, tmp_path, "embed", "--manifest", man, "--out", out, "--force")
    assert done.returncode == 0, done.stderr[-3000:]
    second = _writers(s3, "w/emb")
    assert len(second) == 1 and second != first
    assert sorted(fs.read_table(out, ["utt_id"]).column("utt_id").to_pylist()) == want

    labels = f"s3://{BUCKET}/w/labels"
    args = ["--k", "4", "--shards", "2", "--seed", "3", "--no-tracking", "--json"]
    done = _cli(s3, tmp_path, "cluster", "--embeddings", out, "--out", labels, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = cli_json(done.stdout)
    local = str(tmp_path / "labels")
    done = _cli(s3, tmp_path, "cluster", "--embeddings", out, "--out", local, *args)
    assert done.returncode == 0, done.stderr[-3000:]  # the same input, written locally
    got, ref = _labels(labels), _labels(local)
    assert got["utt_id"] == ref["utt_id"] == want
    assert got["cluster"] == ref["cluster"] and got["kept"] == ref["kept"]
    top = {k[len("w/labels/") :] for k in s3.keys("w/labels/") if k.count("/") == 2}
    assert {"_SUCCESS", "_summary.json", "_centroids.npy", "_sizes.png"} <= top
    assert summary["plots"]["sizes"] == f"{labels}/_sizes.png"
    assert (
        json.loads(
            s3.client.get_object(Bucket=BUCKET, Key="w/labels/_summary.json")["Body"].read()
        )["k"]
        == 4
    )


def test_a_stopped_writer_is_never_read_and_a_foreign_prefix_is_refused(s3, embedded, tmp_path):
    """On S3 a killed writer leaves a prefix ``w-<id>/`` with parts and no marker: a
    reader refuses the folder, the rerun deletes the prefix and writes the whole
    output. A prefix holding objects raysv did not write is refused in one line,
    and nothing there is touched."""
    labels = f"s3://{BUCKET}/k/labels"
    s3.client.put_object(Bucket=BUCKET, Key="k/labels/w-0badc0de/_raysv_staging", Body=b"x")
    s3.client.upload_file(
        os.path.join(embedded.local, outputs.read_marker(embedded.local)["parts"][0]),
        BUCKET,
        "k/labels/w-0badc0de/part-00000.parquet",
    )
    with pytest.raises(OutputError, match="no _SUCCESS marker"):
        fs.read_table(labels)
    args = ["--k", "4", "--shards", "1", "--no-tracking", "--json"]
    done = _cli(s3, tmp_path, "cluster", "--embeddings", embedded.uri, "--out", labels, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "w-0badc0de" not in _writers(s3, "k/labels") and len(_writers(s3, "k/labels")) == 1
    assert fs.read_table(labels).num_rows == embedded.summary["rows"]

    s3.client.put_object(Bucket=BUCKET, Key="k/mine/notes.txt", Body=b"the user's")
    for argv in (
        ["cluster", "--embeddings", embedded.uri, "--out", f"s3://{BUCKET}/k/mine", *args],
        ["embed", "--manifest", embedded.manifest, "--out", f"s3://{BUCKET}/k/mine"],
    ):
        done = _cli(s3, tmp_path, *argv)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]
        assert len(lines) == 1 and f"s3://{BUCKET}/k/mine" in lines[0], done.stderr
        assert "notes.txt" in lines[0]
        assert s3.keys("k/mine/") == ["k/mine/notes.txt"]

    # tracking with an object-store --out needs a tracking server: refused before work
    nolog = f"s3://{BUCKET}/k/nolog"
    done = _cli(s3, tmp_path, "cluster", "--embeddings", embedded.uri, "--out", nolog, "--k", "4")
    assert done.returncode == 2 and "--tracking-uri" in done.stderr, done.stderr[-3000:]
    assert s3.keys("k/nolog") == [] and os.listdir(tmp_path) == []


def test_staged_on_s3_keeps_the_earlier_output_until_the_new_marker(s3):
    """The writer side without Ray: a body that fails leaves the earlier output whole
    and its own prefix removed; a commit switches readers to the new parts at once."""
    out = f"s3://{BUCKET}/st/out"
    with outputs.staged(out, "raysv test") as tmp:
        fs.write_table(pa.table({"utt_id": _ids(0, 3)}), f"{tmp}/a.parquet")
        outputs.commit(tmp, out, "raysv test", 3)
    assert fs.read_table(out).column("utt_id").to_pylist() == _ids(0, 3)
    with pytest.raises(RuntimeError, match="stopped"), outputs.staged(out, "raysv test") as tmp:
        fs.write_table(pa.table({"utt_id": _ids(10, 5)}), f"{tmp}/a.parquet")
        raise RuntimeError("stopped")
    assert fs.read_table(out).column("utt_id").to_pylist() == _ids(0, 3)
    assert len(_writers(s3, "st/out")) == 1
    with outputs.staged(out, "raysv test") as tmp:
        fs.write_table(pa.table({"utt_id": _ids(20, 2)}), f"{tmp}/b.parquet")
        assert fs.read_table(out).column("utt_id").to_pylist() == _ids(0, 3)  # not yet
        outputs.commit(tmp, out, "raysv test", 2)
    assert fs.read_table(out).column("utt_id").to_pylist() == _ids(20, 2)
    # ("st/out/" itself: pyarrow keeps an empty object where a deletion emptied a "folder")
    assert [k[len("st/out/") :] for k in s3.keys("st/out/") if k != "st/out/"] == [
        "_SUCCESS",
        f"{tmp.rsplit('/', 1)[1]}/_raysv_staging",
        f"{tmp.rsplit('/', 1)[1]}/b.parquet",
    ]
    # a marker may not list a part outside its folder
    bad = {"format": outputs.FORMAT, "command": "x", "rows": 1, "parts": ["w-1/../../x.parquet"]}
    s3.client.put_object(Bucket=BUCKET, Key="st/bad/_SUCCESS", Body=json.dumps(bad).encode())
    with pytest.raises(OutputError, match="not a file name"):
        outputs.parts(f"s3://{BUCKET}/st/bad")


# ---------------------------------------------------------------- corpus folders
def test_an_s3_path_in_a_corpus_dialogues_file_only_when_allowed(s3, tmp_path):
    """A corpus folder's own files may not name audio outside it, s3:// included: the
    path is refused with its line unless opted in; opted in, it is imported from S3
    (its header read through pyarrow)."""
    data = tmp_path / "corpus"
    for name in ("a", "b", "c", "d"):
        write_wav(data / "unlabeled" / f"{name}.wav", seconds=1.0, seed=ord(name))
    far = f"s3://{BUCKET}/audio/far.wav"
    write_wav(tmp_path / "far.wav", seconds=1.25, seed=7)
    s3.client.upload_file(str(tmp_path / "far.wav"), BUCKET, "audio/far.wav")
    lines = [
        {"dialogue_id": "d1", "utterances": ["unlabeled/a.wav", "unlabeled/b.wav"]},
        {"dialogue_id": "d2", "utterances": ["unlabeled/c.wav", far, "unlabeled/d.wav"]},
    ]
    (data / "dialogues.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    man, s = prepare_corpus(str(data), str(tmp_path / "refused"))
    assert s["skipped"] == {"outside_corpus": 1}
    skipped = [
        json.loads(x) for x in (tmp_path / "refused" / "skipped.jsonl").read_text().split("\n") if x
    ]
    assert [(p["kind"], p["where"]) for p in skipped] == [
        ("outside_corpus", f"{data / 'dialogues.jsonl'}:2")
    ]
    assert far in skipped[0]["message"] and "--allow-outside-paths" in skipped[0]["message"]
    assert far not in pq.read_table(man.utterances).column("path").to_pylist()
    dialogues = {d["dialogue_id"]: d["num_utts"] for d in pq.read_table(man.dialogues).to_pylist()}
    assert dialogues == {"d1": 2, "d2": 2}

    man, s = prepare_corpus(str(data), str(tmp_path / "allowed"), allow_outside=True)
    assert "outside_corpus" not in s["skipped"]
    rows = {r["path"]: r for r in pq.read_table(man.utterances).to_pylist()}
    assert rows[far]["duration_s"] == pytest.approx(1.25)
    dialogues = {d["dialogue_id"]: d["num_utts"] for d in pq.read_table(man.dialogues).to_pylist()}
    assert dialogues == {"d1": 2, "d2": 3}


def test_an_s3_output_holding_a_users_object_is_not_replaced(s3):
    """On S3 as on disk: a rerun replaces only what the earlier output's marker
    accounts for; a user's object beside it makes the rerun refuse, and it stays. An
    --out that is an object (not a prefix) is refused. The marker is written before the
    records are copied up: a new prefix never holds records without a marker."""
    out = f"s3://{BUCKET}/u/out"
    with outputs.staged(out, "raysv test") as tmp:
        fs.write_table(pa.table({"utt_id": _ids(0, 2)}), f"{tmp}/a.parquet")
        fs.write_bytes(f"{tmp}/_skipped-1.jsonl", b"{}\n")
        outputs.commit(tmp, out, "raysv test", 2)
    assert s3.keys("u/out/_skipped-1.jsonl") == ["u/out/_skipped-1.jsonl"]
    s3.client.put_object(Bucket=BUCKET, Key="u/out/notes.txt", Body=b"mine")
    with (
        pytest.raises(OutputError, match=r"holds 1 object\(s\) raysv test did not write.*notes"),
        outputs.staged(out, "raysv test"),
    ):
        pass
    assert s3.client.get_object(Bucket=BUCKET, Key="u/out/notes.txt")["Body"].read() == b"mine"
    assert fs.read_table(out).column("utt_id").to_pylist() == _ids(0, 2)

    s3.client.put_object(Bucket=BUCKET, Key="u/file", Body=b"x")
    with (
        pytest.raises(OutputError, match="is an object, not a prefix"),
        outputs.staged(f"s3://{BUCKET}/u/file", "raysv test"),
    ):
        pass

    # the marker first: if copying the records up fails (a kill, the network), readers
    # already read the new parts and a rerun is not refused
    fresh = f"s3://{BUCKET}/u/fresh"
    resolve = fs.resolve

    class NoCopy:
        def __init__(self, store):
            self.store = store

        def copy_file(self, *args):
            raise OSError("connection lost")

        def __getattr__(self, name):
            return getattr(self.store, name)

    def failing(uri):
        store, path = resolve(uri)
        return (NoCopy(store), path) if uri == fresh else (store, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fs, "resolve", failing)
        with (
            pytest.raises(OSError, match="connection lost"),
            outputs.staged(fresh, "raysv test") as tmp,
        ):
            fs.write_table(pa.table({"utt_id": _ids(5, 1)}), f"{tmp}/a.parquet")
            fs.write_bytes(f"{tmp}/_centroids.npy", b"new")
            outputs.commit(tmp, fresh, "raysv test", 1)
    assert fs.read_table(fresh).column("utt_id").to_pylist() == _ids(5, 1)
    _write = [k for k in s3.keys("u/fresh/") if k.endswith("_centroids.npy")]
    assert _write == [f"u/fresh/{tmp.rsplit('/', 1)[1]}/_centroids.npy"]  # not copied up yet
    with outputs.staged(fresh, "raysv test") as tmp:  # the rerun goes through
        fs.write_table(pa.table({"utt_id": _ids(7, 1)}), f"{tmp}/a.parquet")
        outputs.commit(tmp, fresh, "raysv test", 1)
    assert fs.read_table(fresh).column("utt_id").to_pylist() == _ids(7, 1)


# ---------------------------------------------------------------- training on S3
@pytest.mark.slow  # ~2 min on 2 cores (two CLI runs, each with its own Ray): .ci/run's 2nd step
def test_checkpoints_in_the_bucket_resume_a_run_on_a_fresh_disk(s3, tiny_corpus, tmp_path):
    """``train.storage_path=s3://...``: Ray Train writes the checkpoints to the bucket,
    nothing under the run folder's ``ray/``; the same run started again from another
    empty run folder (another machine's disk) resumes from the bucket's last checkpoint:
    the step counter continues and the earlier epochs are not trained again."""
    smoke = os.path.join(ROOT, "configs", "pretrain_smoke.yaml")
    store = f"s3://{BUCKET}/ckpt"

    def pretrain(out: str, *extra: str) -> tuple[dict, str]:
        argv = ["pretrain", "--config", smoke, "--data", tiny_corpus, "--out", out]
        done = _cli(s3, tmp_path, *argv, "--set", f"train.storage_path={store}", *extra, "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        return cli_json(done.stdout), done.stderr

    first, log = pretrain(str(tmp_path / "a"))
    assert f"Stage I: checkpoints go to {store}/smoke" in log
    assert first["steps"] == 2 * first["history"][0]["steps_in_epoch"]
    assert not os.path.exists(tmp_path / "a" / "ray")  # nothing of Ray Train's locally
    assert not os.path.exists(tmp_path / "s3:")
    saved = [k for k in s3.keys("ckpt/smoke/") if k.endswith("/state.pt")]
    assert len(saved) >= 1, s3.keys("ckpt/")

    second, log = pretrain(str(tmp_path / "b"), "--set", "train.epochs=4")
    held = {k.split("/")[2] for k in saved}  # ckpt/smoke/checkpoint_<date>/state.pt
    assert f"Stage I: resuming from the last of {len(held)} checkpoint(s) at {store}/smoke" in log
    per_epoch = first["history"][0]["steps_in_epoch"]
    assert second["steps"] == 4 * per_epoch
    assert [e["epoch"] for e in second["history"]] == [0, 1, 2, 3]
    assert second["history"][:2] == first["history"]  # restored from the bucket, not rerun
    assert second["history"][2]["step"] == 3 * per_epoch
    assert os.path.isfile(second["best_model"]) and second["best_model"].startswith(
        str(tmp_path / "b")
    )


# ---------------------------------------------------------------- run folders on S3
def _work(monkeypatch, tmp_path, name: str) -> str:
    """Point RAYSV_WORK_DIR at a fresh folder (another machine's disk); returns it."""
    root = str(tmp_path / name)
    monkeypatch.setenv("RAYSV_WORK_DIR", root)
    return root


def _files(folder: str) -> dict:
    """``{relative path: bytes}`` of the files under ``folder``."""
    got = {}
    for base, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(base, n), "rb") as f:
                got[os.path.relpath(os.path.join(base, n), folder)] = f.read()
    return got


def test_a_run_folder_on_s3_travels_between_working_copies(s3, tmp_path, monkeypatch):
    """``--out s3://...``: the run writes into a working copy that is pushed to the bucket
    when it ends; another machine's run of that folder (a fresh working copy) starts from
    the bucket's copy, files with the times they had (a corpus's fingerprint counts
    them); a file changed there, or deleted from the bucket, reaches the first copy on
    its next run; temporary (hidden) files and ``ray/`` folders never travel."""
    from raysv.data import run_store
    from raysv.data.corpus import fingerprint

    uri = f"s3://{BUCKET}/runs/travel"
    _work(monkeypatch, tmp_path, "a")
    with run_store.run_folder(uri, "raysv test") as a:
        assert a.startswith(str(tmp_path / "a")) and os.path.isdir(a)
        assert run_store.active() == (a, uri)
        outputs.claim_run(a, "raysv test")
        fs.write_bytes(os.path.join(a, "summary.json"), b'{"epochs": 1}')
        fs.write_bytes(os.path.join(a, "stage1", "best_model.pt"), b"weights-1")
        fs.write_bytes(os.path.join(a, "corpus", "wav", "s1", "u1.wav"), b"RIFF-audio")
        fs.write_bytes(os.path.join(a, ".scratch"), b"temporary")
        fs.write_bytes(os.path.join(a, "stage1", "ray", "state.pt"), b"ray's")
    assert run_store.active() is None
    assert s3.keys("runs/travel/") == [
        "runs/travel/_raysv_files.json",
        "runs/travel/_raysv_run.json",
        "runs/travel/corpus/wav/s1/u1.wav",
        "runs/travel/stage1/best_model.pt",
        "runs/travel/summary.json",
    ]
    _work(monkeypatch, tmp_path, "b")
    with run_store.run_folder(uri, "raysv test") as b:
        assert b != a
        assert {k: v for k, v in _files(b).items() if not k.startswith(".")} == {
            "_raysv_run.json": _files(a)["_raysv_run.json"],
            "summary.json": b'{"epochs": 1}',
            os.path.join("stage1", "best_model.pt"): b"weights-1",
            os.path.join("corpus", "wav", "s1", "u1.wav"): b"RIFF-audio",
        }
        corpus = os.path.join("corpus", "wav", "s1", "u1.wav")
        assert os.stat(os.path.join(b, corpus)).st_mtime_ns == (
            os.stat(os.path.join(a, corpus)).st_mtime_ns
        )
        assert fingerprint(os.path.join(b, "corpus")) == fingerprint(os.path.join(a, "corpus"))
        fs.write_bytes(os.path.join(b, "summary.json"), b'{"epochs": 2, "more": true}')
    s3.client.delete_object(Bucket=BUCKET, Key="runs/travel/stage1/best_model.pt")
    _work(monkeypatch, tmp_path, "a")
    with run_store.run_folder(uri, "raysv test") as again:
        assert again == a
        assert _files(a)["summary.json"] == b'{"epochs": 2, "more": true}'
        assert not os.path.exists(os.path.join(a, "stage1", "best_model.pt"))
        assert _files(a)[".scratch"] == b"temporary"  # local, never sent


def test_an_emptied_prefix_is_a_new_run_and_the_old_copy_is_kept(s3, tmp_path, monkeypatch):
    """A prefix emptied and used again is another run: the working copy of the earlier
    one (which may hold what it did after its last push) is set aside, not mixed in."""
    from raysv.data import run_store

    uri = f"s3://{BUCKET}/runs/again"
    root = _work(monkeypatch, tmp_path, "a")
    with run_store.run_folder(uri, "raysv test") as a:
        fs.write_bytes(os.path.join(a, "stage1", "summary.json"), b"{}")
    fs.write_bytes(os.path.join(a, "stage1", "best_model.pt"), b"after the last push")
    for key in s3.keys("runs/again/"):
        s3.client.delete_object(Bucket=BUCKET, Key=key)
    with run_store.run_folder(uri, "raysv test") as fresh:
        assert fresh == a and not os.path.exists(os.path.join(fresh, "stage1"))
    (aside,) = [n for n in os.listdir(root) if ".earlier-" in n]
    assert _files(os.path.join(root, aside))[os.path.join("stage1", "best_model.pt")] == (
        b"after the last push"
    )


def test_a_report_of_a_prefix_without_a_run_is_refused(s3, tmp_path, monkeypatch, capsys):
    """``raysv report s3://...`` reads a run folder; a prefix without one is refused in one
    line and nothing is written there."""
    _work(monkeypatch, tmp_path, "a")
    assert main(["report", f"s3://{BUCKET}/runs/none"]) == 2
    err = capsys.readouterr().err
    assert f"s3://{BUCKET}/runs/none: no run folder of raysv there" in err
    assert s3.keys("runs/none") == []


def test_a_bucket_that_is_not_there_is_one_line(s3, tmp_path, monkeypatch):
    """Storage errors name the URI in one line, not a traceback of pyarrow's."""
    from raysv.data import run_store

    _work(monkeypatch, tmp_path, "a")
    with pytest.raises(OutputError) as err, run_store.run_folder("s3://nobucket/run", "raysv t"):
        raise AssertionError("not reached")
    assert str(err.value).startswith("s3://nobucket/run: ") and "\n" not in str(err.value)


def test_a_run_folder_on_s3_is_pushed_when_the_run_fails(s3, tmp_path, monkeypatch):
    """What a failed run did is in the bucket: the push runs when the body raises."""
    from raysv.data import run_store

    _work(monkeypatch, tmp_path, "a")
    failing = run_store.run_folder(f"s3://{BUCKET}/runs/failed", "raysv test")
    with pytest.raises(RuntimeError, match="stage 2 failed"), failing as a:
        fs.write_bytes(os.path.join(a, "stage1", "summary.json"), b"{}")
        raise RuntimeError("stage 2 failed")
    assert "runs/failed/stage1/summary.json" in s3.keys("runs/failed/")


def test_results_of_an_old_import_are_found_in_the_bucket_too(s3, tmp_path, monkeypatch):
    """A corpus imported again over a run on s3 is refused when the run's results are in
    the bucket, checkpoints included (they are only there), and the message names the
    bucket's paths. The refusal sticks across starts (also when a start failed while
    checking) until the results are deleted in the bucket, as the message says; an
    empty "folder" object left there does not count."""
    from raysv.data import run_store
    from raysv.data.corpus import refuse_stale

    _work(monkeypatch, tmp_path, "a")
    uri = f"s3://{BUCKET}/runs/stale"
    first = {"reused": False, "data": "/corpora/mine", "fingerprint": "A"}
    new = {**first, "fingerprint": "B"}
    with run_store.run_folder(uri, "raysv test") as a:
        refuse_stale(first, a, ("ray", "summary.json"), "pretrain")  # nothing made yet
        fs.write_bytes(f"{uri}/ray/checkpoint_000000/model.pt", b"as Ray Train writes it")
        assert not os.path.exists(os.path.join(a, "ray"))
        refuse_stale({**first, "reused": True}, a, ("ray", "summary.json"), "pretrain")
        with pytest.raises(ManifestError) as err:
            refuse_stale(new, a, ("ray", "summary.json"), "pretrain")
        assert f"the corpus changed since {uri} was started, and {uri}/ray was made" in str(
            err.value
        )
    stale = pytest.raises(ManifestError, match=f"{uri}/ray was made from the old import")
    with run_store.run_folder(uri, "raysv test") as a, stale:  # started again: refused
        fs.write_bytes(os.path.join(a, ".summary.json.tmp-1"), b"a killed step's leftover")
        refuse_stale({**new, "reused": True}, a, ("ray", "summary.json"), "pretrain")
    for key in s3.keys("runs/stale/ray/"):
        s3.client.delete_object(Bucket=BUCKET, Key=key)
    s3.client.put_object(Bucket=BUCKET, Key="runs/stale/ray/checkpoint_000000/", Body=b"")
    with run_store.run_folder(uri, "raysv test") as a:
        refuse_stale({**new, "reused": True}, a, ("ray", "summary.json"), "pretrain")  # goes on
        refuse_stale({**new, "reused": True}, a, ("ray", "summary.json"), "pretrain")
        # another command's results in the same folder are checked apart: iterate's
        # were made from import A (its record says so), pretrain's now are of B
        refuse_stale({**first, "reused": True}, a, ("round0",), "iterate")
        fs.write_bytes(os.path.join(a, "round0", "_summary.json"), b"{}")
        with pytest.raises(ManifestError, match="round0 was made from the old import"):
            refuse_stale({**new, "reused": True}, a, ("round0",), "iterate")


def test_a_store_lost_while_checking_for_old_results_is_one_line(s3, tmp_path, monkeypatch):
    """The object store stops answering while a run looks for results of an old import
    there (the endpoint now a closed port on loopback): one line naming the path, not
    pyarrow's traceback."""
    from raysv.data import run_store
    from raysv.data.corpus import refuse_stale

    _work(monkeypatch, tmp_path, "a")
    uri = f"s3://{BUCKET}/runs/lost"
    with pytest.raises(OutputError) as err, run_store.run_folder(uri, "raysv test") as a:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens
        refuse_stale({"reused": False, "data": "/corpora/mine"}, a, ("ray",), "pretrain")
    assert str(err.value).startswith(f"{uri}/ray: cannot read the run folder: ")
    assert "\n" not in str(err.value)


def test_a_prefix_holding_a_users_objects_is_not_taken_for_a_run_folder(s3, tmp_path, monkeypatch):
    """A prefix with objects but no run marker of ours is refused, naming an object;
    nothing is written or deleted there, no working copy is made."""
    from raysv.data import run_store
    from raysv.training.pretrain import run_pretrain

    root = _work(monkeypatch, tmp_path, "a")
    s3.client.put_object(Bucket=BUCKET, Key="users/notes.txt", Body=b"mine")
    refused = r"holds 1 object\(s\) \(e.g. notes.txt\) but no _raysv_run.json"
    with (
        pytest.raises(OutputError, match=refused),
        run_store.run_folder(f"s3://{BUCKET}/users", "raysv test"),
    ):
        raise AssertionError("not reached")
    from raysv.training.config import PretrainConfig

    with pytest.raises(OutputError, match="not a run folder of this raysv"):
        run_pretrain(PretrainConfig(out=f"s3://{BUCKET}/users"))
    assert s3.keys("users/") == ["users/notes.txt"]
    assert not os.path.exists(root)


def test_outputs_of_a_run_on_s3_are_staged_in_the_bucket(s3, tmp_path, monkeypatch):
    """In a working copy, an output folder (what Ray workers write: embeddings, pseudo
    labels) is staged in the bucket, so that workers on any node can write it, then
    copied into the working copy; the push does not upload it again, and replacing it
    leaves only the new output in both places. Ray Train's checkpoints default to the
    bucket."""
    from raysv.data import run_store
    from raysv.training.config import TrainSpec
    from raysv.training.driver import storage_folder

    uri = f"s3://{BUCKET}/runs/staged"
    _work(monkeypatch, tmp_path, "a")
    with run_store.run_folder(uri, "raysv test") as a:
        emb = os.path.join(a, "round0", "embeddings")
        with outputs.staged(emb, "raysv embed") as tmp:
            assert tmp.startswith(f"{uri}/round0/embeddings/w-")
            fs.write_table(pa.table({"utt_id": _ids(0, 3)}), f"{tmp}/part-0.parquet")
            outputs.commit(tmp, emb, "raysv embed", 3)
        assert fs.read_table(emb).column("utt_id").to_pylist() == _ids(0, 3)
        first = outputs.read_marker(emb)["parts"]
        assert os.path.isfile(os.path.join(emb, first[0]))
        assert run_store.push(a, uri) == {"uploaded": 0}  # already there
        with outputs.staged(emb, "raysv embed") as tmp:
            fs.write_table(pa.table({"utt_id": _ids(5, 2)}), f"{tmp}/part-0.parquet")
            outputs.commit(tmp, emb, "raysv embed", 2)
        assert fs.read_table(emb).column("utt_id").to_pylist() == _ids(5, 2)
        assert fs.read_table(f"{uri}/round0/embeddings").column("utt_id").to_pylist() == _ids(5, 2)
        assert not os.path.exists(os.path.join(emb, first[0]))
        stray = str(tmp_path / "stray")  # staged beside the working copy: refused
        os.makedirs(stray)
        with pytest.raises(OutputError, match="a local folder, while the run folder is on object"):
            outputs.commit(stray, emb, "raysv embed", 0)
        assert fs.read_table(emb).column("utt_id").to_pylist() == _ids(5, 2)  # untouched
        assert storage_folder(TrainSpec(), os.path.join(a, "stage1")) == f"{uri}/stage1/ray"
        assert storage_folder(TrainSpec(), str(tmp_path / "x")) == str(tmp_path / "x" / "ray")
    new = outputs.read_marker(emb)["parts"][0]  # w-<id>/part-0.parquet
    assert [k for k in s3.keys("runs/staged/round0/") if not k.endswith("/")] == [
        "runs/staged/round0/embeddings/_SUCCESS",
        f"runs/staged/round0/embeddings/{new.split('/')[0]}/{outputs.STAGING}",
        f"runs/staged/round0/embeddings/{new}",
    ]


@pytest.mark.slow  # ~4 min on 2 cores (three CLI runs, each with its own Ray): .ci/run's 2nd step
def test_run_folders_on_s3_resume_on_a_fresh_disk(s3, tiny_corpus, tmp_path):
    """``raysv pretrain`` and ``raysv iterate`` with ``--out s3://...``: the bucket holds
    the run folders (summaries, best models, the rounds' embeddings and pseudo labels,
    MLflow's store), Ray Train's checkpoints go straight to ``<out>/ray`` there, nothing
    lands in a local ``s3:`` folder; the Stage I run started again with more epochs on
    another disk (its working copy gone) resumes from the bucket: the step count goes on
    and the earlier epochs are the same, not trained again."""
    smoke = os.path.join(ROOT, "configs", "pretrain_smoke.yaml")
    stage1 = f"s3://{BUCKET}/runs/stage1"

    def run(work: str, *argv: str) -> tuple[dict, str]:
        done = _cli(s3, tmp_path, *argv, "--json", env={"RAYSV_WORK_DIR": str(tmp_path / work)})
        assert done.returncode == 0, done.stderr[-3000:]
        return cli_json(done.stdout), done.stderr

    pre = ["pretrain", "--config", smoke, "--data", tiny_corpus, "--out", stage1]
    first, log = run("a", *pre)
    assert f"run folder {stage1}, working copy {tmp_path / 'a'}" in log
    assert f"Stage I: checkpoints go to {stage1}/ray/smoke" in log
    keys = s3.keys("runs/stage1/")
    for name in ("summary.json", "best_model.pt", "_raysv_run.json", "mlflow.db"):
        assert f"runs/stage1/{name}" in keys, keys
    assert any(k.startswith("runs/stage1/ray/smoke/checkpoint_") for k in keys), keys
    copy, where = first["out"], first["run_folder"]
    assert where == stage1
    assert copy.startswith(str(tmp_path / "a")) and not os.path.exists(os.path.join(copy, "ray"))
    assert not os.path.exists(tmp_path / "s3:")

    stage2 = f"s3://{BUCKET}/runs/stage2"
    init = os.path.join(copy, "best_model.pt")
    it_smoke = os.path.join(ROOT, "configs", "iterate_smoke.yaml")
    argv = ["iterate", "--config", it_smoke, "--data", tiny_corpus, "--init", init]
    rounds, _ = run("a", *argv, "--out", stage2, "--set", "rounds=1")
    assert len(rounds["rounds"]) == 1 and rounds["run_folder"] == stage2
    keys = s3.keys("runs/stage2/")
    for name in (
        "summary.json",
        "round1/train/best_model.pt",
        "round0/embeddings/pool/_SUCCESS",
        "round1/labels/_SUCCESS",
    ):
        assert f"runs/stage2/{name}" in keys, keys
    labels = outputs.read_marker(f"{stage2}/round1/labels")
    assert fs.read_table(f"{stage2}/round1/labels").num_rows == labels["rows"]
    report, _ = run("a", "report", stage2)  # a report of the run in the bucket, put there
    assert report["run_folder"] == stage2 and "runs/stage2/report/report.html" in s3.keys(
        "runs/stage2/report/"
    )

    shutil.rmtree(copy)  # another machine's disk: the same RAYSV_WORK_DIR, empty
    second, log = run("a", *pre, "--set", "train.epochs=4")
    assert f"working copy {copy} (" in log
    assert "Stage I: resuming from the last of" in log and f"at {stage1}/ray/smoke" in log
    per_epoch = first["history"][0]["steps_in_epoch"]
    assert second["steps"] == 4 * per_epoch
    assert [e["epoch"] for e in second["history"]] == [0, 1, 2, 3]
    assert second["history"][:2] == first["history"]  # restored from the bucket, not rerun
    assert second["out"] == copy and second["run_folder"] == stage1
    summary = json.loads(
        s3.client.get_object(Bucket=BUCKET, Key="runs/stage1/summary.json")["Body"].read()
    )
    assert summary["steps"] == 4 * per_epoch
