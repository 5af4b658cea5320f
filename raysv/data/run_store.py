"""Run folders on object storage: ``--out s3://bucket/run`` for the run commands.

A run folder holds an SQLite MLflow store, imported manifests, summaries and the
best model, all written with local file calls by the driver. When ``out`` is a
URI, the run works in a **working copy** on the driver's disk and the bucket is
the run's home:

1. :func:`run_folder` checks the URI (a prefix holding objects but no run
   marker of ours is refused: nothing of the user's is touched), writes the run
   marker there, and *pulls* the bucket's copy into the working copy
   ``$RAYSV_WORK_DIR/<name>-<hash>`` (default ``~/.cache/raysv/runs``): a run
   started again on another machine (a fresh disk) continues from what the
   bucket holds, finished stages included.
2. The command runs on the working copy. Ray Train writes its checkpoints
   straight to the bucket, under ``ray/`` of each stage's folder there
   (:func:`location`, used where the checkpoint folder defaults to
   ``<stage out>/ray``), so a run killed mid-stage resumes from the bucket.
   Output folders of parts (embeddings, pseudo labels, and the records of
   unreadable rows that embedding actors write) are staged in the bucket
   (:func:`raysv.data.outputs.staged`) and then copied into the working copy.
3. :func:`sync` *pushes* the working copy's new and changed files at each
   stage's end, and once more when the command ends (failed or not): what is
   done is in the bucket.

Sync is by file: a record (``.raysv-sync.json`` in the working copy) holds, per
file, its local (size, mtime) and the object's (size, mtime) at the last
transfer. A push uploads files changed locally since then, and an index of
their local modification times (``_raysv_files.json``); it deletes nothing (an
output replaced in the working copy was replaced in the bucket as it was
written). A pull downloads objects changed in the bucket since then or missing
locally, with the modification times they had (a corpus's fingerprint counts
them), and removes local files whose objects were deleted from the bucket and
that did not change since; the bucket wins over a local change (two machines
running one run folder at once is not supported). Not synced: names starting
with ``.`` (a command's temporary files) and ``ray/`` folders (checkpoints,
read from the bucket). The run marker carries a run id: a working copy made for
an earlier run at the same URI (the prefix was emptied since) is set aside,
not mixed in.

Limits. Summaries and MLflow's store name absolute paths in the working copy:
a run resumed elsewhere needs the same ``RAYSV_WORK_DIR`` (the default is the
same on machines with the same home folder). On a multi-node cluster, Train
workers and embedding actors read a stage's inputs (manifests, shards, the
encoder) from the working copy and rank 0 writes its per-epoch records there,
so ``RAYSV_WORK_DIR`` must be on a file system every node sees; the bucket
spares that file system from keeping anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator

import pyarrow.fs as pafs

from raysv.data import fs
from raysv.data.outputs import RUN_MARKER  # outputs imports this module only in functions
from raysv.errors import ManifestError, OutputError, one_line

log = logging.getLogger("raysv")

RECORD = ".raysv-sync.json"
INDEX = "_raysv_files.json"  # in the bucket: each file's local (size, mtime_ns) when pushed

_active: list[tuple[str, str]] = []  # (working copy, URI) of the run this process runs


def is_uri(out: str) -> bool:
    """True for an object-store URI (``s3://...``); plain paths and ``file://`` are local."""
    return not fs.is_local(str(out))


def work_root() -> str:
    """Where working copies live: ``$RAYSV_WORK_DIR`` or ``~/.cache/raysv/runs``."""
    return os.path.abspath(
        os.path.expanduser(os.environ.get("RAYSV_WORK_DIR") or "~/.cache/raysv/runs")
    )


def work_copy(uri: str) -> str:
    """The working copy of run folder ``uri``: ``<work_root>/<readable name>-<hash>``."""
    uri = uri.rstrip("/")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.split("://", 1)[1])[-60:].strip("._") or "run"
    return os.path.join(work_root(), f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}")


def active() -> tuple[str, str] | None:
    """``(working copy, URI)`` of the run folder this process works on, if on a URI."""
    return _active[-1] if _active else None


def location(path: str) -> str:
    """Where ``path`` lives in the bucket when it lies in the active working copy (the
    matching URI), else ``path`` unchanged."""
    remote = remote_of(path)
    return remote if remote is not None else path


def remote_of(path: str) -> str | None:
    """The URI of local ``path`` when it lies in the active working copy, else None."""
    if not _active or not fs.is_local(str(path)):
        return None
    local, uri = _active[-1]
    rel = os.path.relpath(os.path.abspath(path), local)
    if rel == ".":
        return uri
    if rel.startswith(".."):
        return None
    return fs.join(uri, *rel.split(os.sep))


# ---------------------------------------------------------------- listing and transfer
def _synced(rel: str) -> bool:
    """Whether relative path ``rel`` travels: not hidden (a command's temporary files),
    not under a ``ray/`` folder (Ray Train's checkpoints: already in the bucket, and
    read from there), not the bucket's index of mtimes."""
    parts = rel.split("/")
    return rel != INDEX and not any(p.startswith(".") or p == "ray" for p in parts)


def _local_files(local: str) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of the files under ``local`` that travel."""
    found: dict[str, tuple[int, int]] = {}
    for base, dirs, files in os.walk(local):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "ray")
        for name in sorted(files):
            path = os.path.join(base, name)
            rel = os.path.relpath(path, local).replace(os.sep, "/")
            if _synced(rel):
                st = os.stat(path)
                found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def _stat(info: pafs.FileInfo) -> tuple[int, int]:
    return (int(info.size or 0), int(info.mtime_ns or 0))


def _remote_files(uri: str) -> dict[str, tuple[int, int]]:
    """``{relative key: (size, mtime_ns)}`` of the objects under ``uri`` that travel."""
    store, base = fs.resolve(uri)
    base = base.rstrip("/")
    infos = store.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found = {}
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) + 1 :]
        if rel and _synced(rel):
            found[rel] = _stat(info)
    return found


def _copy(src_store, src: str, dst_store, dst: str) -> None:
    with src_store.open_input_stream(src) as fin, dst_store.open_output_stream(dst) as fout:
        while chunk := fin.read(8 << 20):
            fout.write(chunk)


def _download(store, key: str, path: str, mtime_ns: int | None = None) -> tuple[int, int]:
    """Object ``key`` into local file ``path`` (a temporary file renamed into place), with
    modification time ``mtime_ns`` when given (the time the file had where it was
    written: a corpus's fingerprint counts it); returns the file's (size, mtime_ns)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    name = f".{os.path.basename(path)}.get-{uuid.uuid4().hex[:8]}"
    tmp = os.path.join(os.path.dirname(path), name)
    try:
        _copy(store, key, pafs.LocalFileSystem(), tmp)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def _load_record(local: str) -> dict:
    """The working copy's sync record: ``{"run_id": ..., "files": {rel: {"local": [size,
    mtime_ns], "remote": [size, mtime_ns]}}}`` (empty when missing or damaged: then
    every file is compared afresh, a full transfer)."""
    path = os.path.join(local, RECORD)
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {"files": {}}
    if not isinstance(rec, dict) or not isinstance(rec.get("files"), dict):
        return {"files": {}}
    return rec


def _save_record(local: str, record: dict) -> None:
    fs.write_bytes(os.path.join(local, RECORD), json.dumps(record).encode())


def _index(uri: str) -> dict:
    """The bucket's index of the files' local (size, mtime_ns) as last pushed."""
    try:
        got = json.loads(fs.read_bytes(fs.join(uri, INDEX)))
    except (ManifestError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


# ---------------------------------------------------------------- pull and push
def pull(uri: str, local: str) -> dict:
    """Bring the working copy ``local`` up to the bucket's copy ``uri`` (see the module's
    docstring): objects changed in the bucket since the last transfer, or missing
    locally, are downloaded with the modification times they had when pushed; local
    files whose object was deleted from the bucket, and that did not change since the
    last transfer, are removed. Returns ``{"downloaded": n, "removed": n}``."""
    store, base = fs.resolve(uri)
    base = base.rstrip("/")
    os.makedirs(local, exist_ok=True)
    record = _load_record(local)
    files = record["files"]
    remote = _remote_files(uri)
    here = _local_files(local)
    index = _index(uri)
    got = removed = 0
    for rel, rstat in sorted(remote.items()):
        rec = files.get(rel)
        if rec and tuple(rec["remote"]) == rstat and rel in here:
            continue  # unchanged in the bucket since the last transfer
        was = index.get(rel)
        mtime = (
            int(was[1]) if isinstance(was, list) and len(was) == 2 and was[0] == rstat[0] else None
        )
        lstat = _download(store, f"{base}/{rel}", os.path.join(local, *rel.split("/")), mtime)
        files[rel] = {"local": list(lstat), "remote": list(rstat)}
        got += 1
    for rel in sorted(set(files) - set(remote)):
        lstat = here.get(rel)
        if lstat is not None and tuple(files[rel]["local"]) == lstat:
            os.remove(os.path.join(local, *rel.split("/")))  # deleted from the bucket
            removed += 1
        files.pop(rel)
    _save_record(local, record)
    return {"downloaded": got, "removed": removed}


def push(local: str, uri: str) -> dict:
    """Upload the working copy's files that changed since the last transfer to ``uri``,
    then the index of their modification times. Deletes nothing: an output replaced in
    the working copy was replaced in the bucket when it was written
    (:func:`raysv.data.outputs.commit`). Returns ``{"uploaded": n}``."""
    store, base = fs.resolve(uri)
    base = base.rstrip("/")
    record = _load_record(local)
    files = record["files"]
    here = _local_files(local)
    sent = [
        rel
        for rel, lstat in sorted(here.items())
        if tuple(files.get(rel, {}).get("local", ())) != lstat
    ]
    for rel in sent:
        _copy(pafs.LocalFileSystem(), os.path.join(local, *rel.split("/")), store, f"{base}/{rel}")
    # the objects' sizes and times, asked for together once they are all up
    infos = store.get_file_info([f"{base}/{rel}" for rel in sent]) if sent else []
    for rel, info in zip(sent, infos, strict=True):
        files[rel] = {"local": list(here[rel]), "remote": list(_stat(info))}
    if sent:
        index = {rel: rec["local"] for rel, rec in sorted(files.items())}
        fs.write_bytes(fs.join(uri, INDEX), json.dumps(index).encode())
    _save_record(local, record)
    return {"uploaded": len(sent)}


def record_transfer(local_path: str) -> None:
    """Note that the files under ``local_path`` (in the active working copy) equal their
    objects in the bucket, so that :func:`push` does not upload them again (used after
    an output staged in the bucket was copied into the working copy)."""
    if not _active:
        return
    local, uri = _active[-1]
    rel_root = os.path.relpath(os.path.abspath(local_path), local).replace(os.sep, "/")
    record = _load_record(local)
    remote = _remote_files(fs.join(uri, rel_root))
    for rel, lstat in _local_files(local_path).items():
        if rel in remote:
            record["files"][f"{rel_root}/{rel}"] = {
                "local": list(lstat),
                "remote": list(remote[rel]),
            }
    _save_record(local, record)


def holds_objects(uri: str) -> bool:
    """Whether ``uri`` is an object, or a prefix holding an object, that is not hidden
    (the empty "folder" objects that consoles and pyarrow leave are not files)."""
    store, base = fs.resolve(uri)
    base = base.rstrip("/")
    if store.get_file_info(base).type == pafs.FileType.File:
        return True
    infos = store.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return any(
        i.type == pafs.FileType.File
        and not any(p.startswith(".") for p in i.path[len(base) + 1 :].split("/"))
        for i in infos
    )


def fetch_output(uri: str, path: str) -> None:
    """Copy the complete output folder at ``uri`` into local ``path`` (replacing an earlier
    copy whole: the new one is assembled in a hidden sibling, then renamed into place;
    hidden siblings a killed fetch left are removed first)."""
    store, base = fs.resolve(uri)
    base = base.rstrip("/")
    parent, name = os.path.split(os.path.abspath(path))
    for kind in ("get", "old"):
        for p in glob.glob(os.path.join(parent, f".{glob.escape(name)}.{kind}-*")):
            shutil.rmtree(p, ignore_errors=True)
    tmp = os.path.join(parent, f".{name}.get-{uuid.uuid4().hex[:8]}")
    try:
        for rel in sorted(_remote_files(uri)):
            _download(store, f"{base}/{rel}", os.path.join(tmp, *rel.split("/")))
        os.makedirs(tmp, exist_ok=True)
        old = None
        if os.path.exists(path):
            old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
        os.rename(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    record_transfer(path)


def sync() -> None:
    """Push the active working copy to its bucket now (a stage has ended); nothing when
    the run folder is local."""
    if not _active:
        return
    local, uri = _active[-1]
    try:
        done = push(local, uri)
    except OSError as exc:
        raise OutputError(f"{uri}: cannot upload the run folder: {one_line(exc)}") from None
    if done["uploaded"]:
        log.info("run folder %s: %d file(s) uploaded", uri, done["uploaded"])


# ---------------------------------------------------------------- the run folder
def _claim(uri: str, command: str, create: bool = True) -> str:
    """Refuse a prefix that holds objects but no run marker of ours; mark a new one
    (unless not ``create``: then a prefix without a marker is refused).
    Returns the run's id (in the marker: a prefix emptied and used again is another run)."""
    from raysv.data.outputs import RUN_FORMAT, check_run_format, read_json

    store, base = fs.resolve(uri)
    if store.get_file_info(base).type == pafs.FileType.File:
        raise OutputError(f"{uri}: is an object, not a prefix; {command} writes a run folder there")
    marker = fs.join(uri, RUN_MARKER)
    rec = read_json(marker)
    if rec is None:
        infos = store.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        entries = sorted(  # objects, not the empty folder markers some tools leave
            i.path[len(base.rstrip("/")) + 1 :] for i in infos if i.type == pafs.FileType.File
        )
        if not create:
            raise OutputError(f"{uri}: no run folder of raysv there (no {RUN_MARKER})")
        if entries:
            raise OutputError(
                f"{uri}: holds {len(entries)} object(s) (e.g. {entries[0]}) but no {RUN_MARKER}: "
                f"not a run folder of this raysv; give {command} a new or empty --out "
                "(raysv never deletes what it did not write)"
            )
        run_id = uuid.uuid4().hex
        body = {"format": RUN_FORMAT, "command": command, "run_id": run_id}
        fs.write_bytes(marker, json.dumps(body).encode())
        return run_id
    check_run_format(rec, uri, command)
    return str(rec.get("run_id"))


def _set_aside(local: str) -> str:
    """Rename a working copy of an earlier run at the same URI out of the way (kept, not
    deleted: it may hold the only copy of what that run did after its last push)."""
    aside = f"{local}.earlier-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    os.rename(local, aside)
    return aside


@contextlib.contextmanager
def run_folder(out: str, command: str, create: bool = True) -> Iterator[str]:
    """Yield the local folder a run command writes into: ``out`` itself when it is a
    local path, else the working copy of the URI ``out`` (pulled from the bucket first,
    pushed at :func:`sync` and when the body ends, failed or not). ``create``: false for
    a command that reads an existing run folder (``raysv report``)."""
    if not is_uri(out):
        yield out
        return
    if _active:
        raise OutputError(f"{out}: a run folder on object storage inside another one")
    uri = str(out).rstrip("/")
    local = work_copy(uri)
    try:
        run_id = _claim(uri, command, create)
        if os.path.isdir(local) and _load_record(local).get("run_id") not in (None, run_id):
            log.warning(
                "%s: the working copy %s is of an earlier run at this URI (the bucket's "
                "prefix was emptied since): kept as %s, starting from the bucket",
                command,
                local,
                _set_aside(local),
            )
        got = pull(uri, local)
    except OSError as exc:
        raise OutputError(f"{uri}: cannot read the run folder: {one_line(exc)}") from None
    record = _load_record(local)
    record["run_id"] = run_id
    _save_record(local, record)
    log.info(
        "%s: run folder %s, working copy %s (%d file(s) from the bucket); results are "
        "uploaded at each stage's end, checkpoints go straight to the bucket",
        command,
        uri,
        local,
        got["downloaded"],
    )
    _active.append((local, uri))
    failed = True
    try:
        yield local
        failed = False
    finally:
        try:
            sync()
        except OutputError as exc:
            if not failed:
                raise
            log.error("%s: after the failure below, %s", command, exc)  # the failure wins
        finally:
            _active.pop()


def on_object_storage(command: str) -> Callable:
    """Decorator for a run command ``fn(cfg, ...)`` whose ``cfg.out`` may be a URI: the
    command runs on the working copy (:func:`run_folder`); its summary (whose paths
    name the working copy) gains ``run_folder``, the URI."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(cfg, *args, **kwargs):
            if not is_uri(cfg.out):
                return fn(cfg, *args, **kwargs)
            with run_folder(cfg.out, command) as local:
                result = fn(dataclasses.replace(cfg, out=local), *args, **kwargs)
            if isinstance(result, dict):  # its paths name the working copy: say where it went
                result = {**result, "run_folder": str(cfg.out).rstrip("/")}
            return result

        return run

    return wrap
