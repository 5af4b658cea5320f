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
   straight to ``<out>/<stage>/ray`` in the bucket (:func:`location`, used
   where the checkpoint folder defaults to ``<stage out>/ray``), so a run killed
   mid-stage resumes from the bucket. Outputs that Ray workers write (embedding
   parts, pseudo-label parts, records of unreadable rows) are staged in the
   bucket too (:func:`raysv.data.outputs.staged`) and then copied into the
   working copy, so workers on other nodes never write to the driver's disk.
3. :func:`sync` *pushes* the working copy's new and changed files at each
   stage's end, and once more when the command ends (failed or not): what is
   done is in the bucket.

Sync is by file: a record (``.raysv-sync.json`` in the working copy) holds, per
file, its local (size, mtime) and the object's (size, mtime) at the last
transfer. A push uploads files changed locally since then and deletes objects
whose local file the run removed (only objects it uploaded itself and that no
one changed since); a pull downloads objects changed in the bucket since then
(the bucket wins over a local change: two machines writing one run folder at
once is not supported) and removes local copies of objects deleted from the
bucket. Names starting with ``.`` (a command's temporary files) are not synced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator

import pyarrow.fs as pafs

from raysv.data import fs
from raysv.errors import OutputError

log = logging.getLogger("raysv")

RECORD = ".raysv-sync.json"
RUN_MARKER = "_raysv_run.json"  # as raysv.data.outputs.RUN_MARKER (imported there: no cycle)

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
def _local_files(local: str) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of the files under ``local`` (none hidden)."""
    found: dict[str, tuple[int, int]] = {}
    for base, dirs, files in os.walk(local):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(base, name)
            st = os.stat(path)
            found[os.path.relpath(path, local).replace(os.sep, "/")] = (st.st_size, st.st_mtime_ns)
    return found


def _stat(info: pafs.FileInfo) -> tuple[int, int]:
    return (int(info.size or 0), int(info.mtime_ns or 0))


def _remote_files(uri: str) -> dict[str, tuple[int, int]]:
    """``{relative key: (size, mtime_ns)}`` of the objects under ``uri`` (none hidden)."""
    store, base = fs.resolve(uri)
    base = base.rstrip("/")
    infos = store.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found = {}
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) + 1 :]
        if rel and not any(part.startswith(".") for part in rel.split("/")):
            found[rel] = _stat(info)
    return found


def _copy(src_store, src: str, dst_store, dst: str) -> None:
    with src_store.open_input_stream(src) as fin, dst_store.open_output_stream(dst) as fout:
        while chunk := fin.read(8 << 20):
            fout.write(chunk)


def _download(store, key: str, path: str) -> tuple[int, int]:
    """Object ``key`` into local file ``path`` (a temporary file renamed into place);
    returns the local file's (size, mtime_ns)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(
        os.path.dirname(path), f".{os.path.basename(path)}.get-{uuid.uuid4().hex[:8]}"
    )
    try:
        _copy(store, key, pafs.LocalFileSystem(), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def _load_record(local: str) -> dict:
    path = os.path.join(local, RECORD)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged record: every file is compared afresh (a full transfer)
    return rec if isinstance(rec, dict) else {}


def _save_record(local: str, record: dict) -> None:
    fs.write_bytes(os.path.join(local, RECORD), json.dumps(record, indent=0).encode())


# ---------------------------------------------------------------- pull and push
def pull(uri: str, local: str) -> dict:
    """Bring the working copy ``local`` up to the bucket's copy ``uri`` (see the module's
    docstring). Returns ``{"downloaded": n, "removed": n}``."""
    store, base = fs.resolve(uri)
    base = base.rstrip("/")
    os.makedirs(local, exist_ok=True)
    record = _load_record(local)
    remote = _remote_files(uri)
    here = _local_files(local)
    got = removed = 0
    for rel, rstat in sorted(remote.items()):
        rec = record.get(rel)
        if rec and tuple(rec["remote"]) == rstat and here.get(rel) is not None:
            continue  # unchanged in the bucket since the last transfer
        lstat = _download(store, f"{base}/{rel}", os.path.join(local, *rel.split("/")))
        record[rel] = {"local": list(lstat), "remote": list(rstat)}
        got += 1
    for rel in sorted(set(record) - set(remote)):
        lstat = here.get(rel)
        if lstat is not None and tuple(record[rel]["local"]) == lstat:
            os.remove(os.path.join(local, *rel.split("/")))  # deleted in the bucket
            removed += 1
        record.pop(rel)
    _save_record(local, record)
    return {"downloaded": got, "removed": removed}


def push(local: str, uri: str) -> dict:
    """Upload the working copy's files changed since the last transfer to ``uri`` and
    delete the objects of files the run removed (see the module's docstring).
    Returns ``{"uploaded": n, "deleted": n}``."""
    store, base = fs.resolve(uri)
    base = base.rstrip("/")
    record = _load_record(local)
    here = _local_files(local)
    sent = deleted = 0
    for rel, lstat in sorted(here.items()):
        rec = record.get(rel)
        if rec and tuple(rec["local"]) == lstat:
            continue
        key = f"{base}/{rel}"
        _copy(pafs.LocalFileSystem(), os.path.join(local, *rel.split("/")), store, key)
        record[rel] = {"local": list(lstat), "remote": list(_stat(store.get_file_info(key)))}
        sent += 1
    gone = sorted(set(record) - set(here))
    if gone:
        infos = store.get_file_info([f"{base}/{rel}" for rel in gone])
        for rel, info in zip(gone, infos, strict=True):
            if info.type == pafs.FileType.File and _stat(info) == tuple(record[rel]["remote"]):
                store.delete_file(info.path)  # ours, unchanged since we wrote it
                deleted += 1
            record.pop(rel)
    _save_record(local, record)
    return {"uploaded": sent, "deleted": deleted}


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
            record[f"{rel_root}/{rel}"] = {"local": list(lstat), "remote": list(remote[rel])}
    _save_record(local, record)


def fetch_output(uri: str, path: str) -> None:
    """Copy the complete output folder at ``uri`` into local ``path`` (replacing an earlier
    copy whole: the new one is assembled in a hidden sibling, then renamed into place)."""
    store, base = fs.resolve(uri)
    base = base.rstrip("/")
    parent, name = os.path.split(os.path.abspath(path))
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
    done = push(local, uri)
    if done["uploaded"] or done["deleted"]:
        log.info(
            "run folder %s: %d file(s) uploaded, %d object(s) removed",
            uri,
            done["uploaded"],
            done["deleted"],
        )


# ---------------------------------------------------------------- the run folder
def _claim(uri: str, command: str) -> None:
    """Refuse a prefix that holds objects but no run marker of ours; mark a new one."""
    from raysv.data.outputs import RUN_FORMAT, read_json

    store, base = fs.resolve(uri)
    if store.get_file_info(base).type == pafs.FileType.File:
        raise OutputError(f"{uri}: is an object, not a prefix; {command} writes a run folder there")
    marker = fs.join(uri, RUN_MARKER)
    rec = read_json(marker)
    if rec is None:
        entries = fs.list_names(uri)
        if entries:
            raise OutputError(
                f"{uri}: holds {len(entries)} object(s) (e.g. {entries[0]}) but no {RUN_MARKER}: "
                f"not a run folder of this raysv; give {command} a new or empty --out "
                "(raysv never deletes what it did not write)"
            )
        fs.write_bytes(marker, json.dumps({"format": RUN_FORMAT, "command": command}).encode())
        return
    if not isinstance(rec, dict) or rec.get("format") != RUN_FORMAT:
        found = rec.get("format") if isinstance(rec, dict) else None
        raise OutputError(
            f"{uri}: a run folder of format {found!r}, this raysv reads {RUN_FORMAT!r}; "
            f"rerun {command} into a new --out"
        )


@contextlib.contextmanager
def run_folder(out: str, command: str) -> Iterator[str]:
    """Yield the local folder a run command writes into: ``out`` itself when it is a
    local path, else the working copy of the URI ``out`` (pulled from the bucket first,
    pushed at :func:`sync` and when the body ends, failed or not)."""
    if not is_uri(out):
        yield out
        return
    if _active:
        raise OutputError(f"{out}: a run folder on object storage inside another one")
    uri = str(out).rstrip("/")
    _claim(uri, command)
    local = work_copy(uri)
    got = pull(uri, local)
    log.info(
        "%s: run folder %s, working copy %s (%d file(s) from the bucket); results are "
        "uploaded at each stage's end, checkpoints go straight to the bucket",
        command,
        uri,
        local,
        got["downloaded"],
    )
    _active.append((local, uri))
    try:
        yield local
    finally:
        try:
            sync()
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
