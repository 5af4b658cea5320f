"""Output folders of Parquet parts: written whole or not at all, read only as listed.

A command that writes a folder of parts (``raysv embed``, the session
averages, ``raysv cluster``'s pseudo labels) goes through :func:`staged`:

1. :func:`check_out` refuses an ``out`` that holds files raysv did not write
   (no completion marker of ours): nothing of the user's is ever deleted.
2. The parts are written into a hidden sibling ``.<name>.tmp-<id>``.
3. :func:`commit` writes the completion marker ``_SUCCESS`` into it (JSON:
   format, the command, rows, and the list of parts), then renames it into
   place; an earlier output of ours at ``out`` is renamed aside first and
   removed after. A kill at any point leaves either the old complete output
   or the new one at ``out`` (plus a hidden sibling that the next run of the
   same command removes), never a mix, and stale parts can't survive.

On an object store (``s3://``...), where nothing renames atomically, the same
steps differ: the parts are written into a staging prefix ``<out>/w-<id>/``
(holding a ``_raysv_staging`` file, so that a later run knows it as ours), the
``_*`` records are copied up to ``out``, and the marker, one object written in
one upload, lists the parts as ``w-<id>/<name>``: until it is written readers
read the earlier output (or refuse the folder), after it the new one. Then the
earlier output's objects and killed writers' prefixes are deleted.

Readers (:func:`parts`, used by :func:`raysv.data.fs.read_table` for every
local folder) read only the parts the marker lists and refuse a folder
without one, naming it. A folder another tool wrote (e.g. Spark, whose
``_SUCCESS`` is empty) is read whole: its marker says it completed but not
which parts it holds. A marker of an older raysv (a row count, no format) is
refused with how to redo it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator

from raysv.errors import ManifestError, OutputError

MARKER = "_SUCCESS"
FORMAT = "raysv-output/1"
STAGING = "_raysv_staging"  # in an object-store writer's prefix <out>/w-<id>/


def _store(folder: str):
    """``(filesystem, path)`` of a local folder or an object-store URI (pyarrow.fs)."""
    from raysv.data import fs

    return fs.resolve(folder)


def read_marker(folder: str) -> dict | None:
    """The completion marker of ``folder``: ``None`` without one, ``{}`` for a foreign
    (empty) one, else its JSON. Raises OutputError for an older raysv's marker.

    ``folder``: a local path or an object-store URI (read through pyarrow.fs).
    """
    import pyarrow.fs as pafs

    store, base = _store(folder)
    path = f"{base.rstrip('/')}/{MARKER}"
    if store.get_file_info(path).type != pafs.FileType.File:
        return None
    with store.open_input_stream(path) as f:
        text = f.read().decode("utf-8", "replace").strip()
    if not text:
        return {}
    try:
        marker = json.loads(text)
    except json.JSONDecodeError:
        marker = None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise OutputError(
            f"{folder}: written by an older raysv or another tool (its {MARKER} is not a "
            f"{FORMAT} marker); rerun the command that wrote it into a new folder"
        )
    return marker


def parts(folder: str) -> list[str]:
    """The Parquet parts of output ``folder`` (full paths or URIs, in the marker's order).

    Refuses a folder without a completion marker and a marker listing a part
    that is missing. The same for local folders and object stores: on an object
    store, where nothing renames atomically, the marker's list alone decides
    what is read (parts not listed, e.g. of a writer that was killed, are ignored).
    """
    import pyarrow.fs as pafs

    from raysv.data import fs

    marker = read_marker(folder)
    if marker is None:
        raise OutputError(
            f"{folder}: no {MARKER} marker, so it is incomplete (a command was stopped while "
            "writing it: rerun it) or another tool's folder (if that tool finished, create an "
            f"empty {MARKER} in it to read all its .parquet files)"
        )
    store, base = _store(folder)
    if not marker:  # another tool's: complete, parts not listed
        infos = store.get_file_info(pafs.FileSelector(base, recursive=False))
        names = sorted(
            i.base_name
            for i in infos
            if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
        )
    else:
        names = list(marker.get("parts", []))
    bad = [n for n in names if not _part_name(n)]
    if bad:
        raise OutputError(
            f"{folder}: its {MARKER} lists a part that is not a file name: {bad[0]!r}"
        )
    infos = store.get_file_info([f"{base.rstrip('/')}/{n}" for n in names]) if names else []
    missing = [n for n, i in zip(names, infos, strict=True) if i.type != pafs.FileType.File]
    if missing:
        raise OutputError(
            f"{folder}: {len(missing)} part(s) its {MARKER} lists are missing (the first: "
            f"{missing[0]}); rerun the command that wrote it"
        )
    return [fs.join(folder, n) for n in names]


def _part_name(name) -> bool:
    """A part a marker may list: a file name, or ``w-<id>/<file name>`` (an object
    store's writer prefix); nothing that leaves the folder."""
    if not isinstance(name, str):
        return False
    bits = name.split("/")
    if len(bits) == 2 and not bits[0].startswith("w-"):
        return False
    return len(bits) <= 2 and all(b not in ("", ".", "..") for b in bits)


def _ours(folder: str) -> bool:
    try:
        return bool(read_marker(folder))
    except OutputError:
        return False


def check_out(out: str, command: str) -> None:
    """Refuse ``out`` if it holds anything but an earlier complete output of this
    ``command`` (on an object store: or prefixes of raysv writers that were stopped).

    Of an earlier output, only what it wrote counts as ours: its marker, the files
    (or writer prefixes) its marker lists, and ``_*`` records; anything else (a
    user's notes, another output nested inside) is refused, so that replacing the
    output deletes nothing raysv did not write. ``command``: named in the error.
    """
    from raysv.data import fs

    out = _local_path(out)
    if not fs.is_local(out):
        import pyarrow.fs as pafs

        store, path = fs.resolve(out)
        if store.get_file_info(path).type == pafs.FileType.File:
            raise OutputError(f"{out}: is an object, not a prefix; {command} writes a folder there")
        entries = fs.list_names(out)
        if not entries:
            return
        stopped = {e for e in entries if e.startswith("w-") and _staging(fs.join(out, e))}
        _refuse_foreign(out, command, [e for e in entries if e not in stopped], "object(s)")
        return
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise OutputError(f"{out}: exists and is not a folder; {command} writes a folder there")
    entries = os.listdir(out)
    if entries:
        _refuse_foreign(out, command, entries, "file(s)")


def _refuse_foreign(out: str, command: str, entries: list[str], what: str) -> None:
    """Refuse ``out`` unless ``entries`` (its non-empty listing, stopped writers' prefixes
    left out) are all an earlier complete output of ``command``."""
    foreign = _not_listed(out, entries) if _ours(out) else sorted(entries)
    if foreign:
        raise OutputError(
            f"{out}: holds {len(foreign)} {what} {command} did not write (e.g. "
            f"{foreign[0]}); give a new or empty folder (raysv never deletes what it did "
            "not write)"
        )
    if entries:
        _same_command(out, command)


def _not_listed(out: str, entries: list[str]) -> list[str]:
    """The entries of output folder ``out`` that its marker does not account for."""
    marker = read_marker(out) or {}
    listed = {str(p).split("/")[0] for p in marker.get("parts", [])}
    listed |= set(marker.get("files", []))
    return sorted(e for e in entries if e != MARKER and not e.startswith("_") and e not in listed)


def _local_path(out: str) -> str:
    """A ``file://`` URI as the path it names; anything else unchanged."""
    from raysv.data import fs

    return fs.resolve(out)[1] if out.startswith("file://") else out


def _same_command(out: str, command: str) -> None:
    """Refuse to replace another command's complete output (``raysv cluster --out``
    pointed at the embeddings it reads, say): a command replaces only its own."""
    wrote = (read_marker(out) or {}).get("command")
    if wrote != command:
        raise OutputError(
            f"{out}: holds the output of {wrote}; {command} replaces only an output of its "
            "own: give another --out"
        )


def _staging(uri: str) -> bool:
    """True for an object-store writer prefix of ours (it holds :data:`STAGING`)."""
    from raysv.data import fs

    return fs.exists(fs.join(uri, STAGING))


def _sibling(out: str, kind: str) -> str:
    parent, name = os.path.split(os.path.abspath(out))
    return os.path.join(parent, f".{name}.{kind}-{uuid.uuid4().hex[:8]}")


def _remove_leftovers(out: str) -> None:
    """Remove hidden siblings of ``out`` that an interrupted run of ours left behind.

    A kill between :func:`commit`'s two renames leaves no ``out`` and the earlier
    complete output at ``.<name>.old-*``: that one is put back first, so nothing
    already done is lost.
    """
    parent, name = os.path.split(os.path.abspath(out))
    if not os.path.exists(out):
        for p in sorted(glob.glob(os.path.join(parent, f".{glob.escape(name)}.old-*"))):
            if _ours(p):
                os.rename(p, out)
                break
    for kind in ("tmp", "old"):
        for p in glob.glob(os.path.join(parent, f".{glob.escape(name)}.{kind}-*")):
            shutil.rmtree(p, ignore_errors=True)


def commit(tmp: str, out: str, command: str, rows: int, extra: dict | None = None) -> dict:
    """Mark ``tmp`` complete (listing its ``*.parquet`` parts, not ``_*``) and move it to ``out``.

    Returns the marker. ``out``, if it exists, must be an output of ours
    (:func:`check_out` ran before the work). On an object store ``tmp`` is a
    writer prefix inside ``out`` (see the module's docstring).
    """
    from raysv.data import fs, run_store

    out = _local_path(out)
    if not fs.is_local(out):
        return _commit_remote(tmp, out, command, rows, extra)
    remote = run_store.remote_of(out)
    if remote is not None:  # in a run folder on object storage: staged in the bucket
        if fs.is_local(tmp):  # parts reaching the bucket file by file could be read mixed
            raise OutputError(
                f"{out}: staged in {tmp}, a local folder, while the run folder is on object "
                "storage: stage it with raysv.data.outputs.staged"
            )
        marker = _commit_remote(tmp, remote, command, rows, extra)
        run_store.fetch_output(remote, out)
        return marker
    names = sorted(  # "_" and "." files are the command's own records, not parts
        n for n in os.listdir(tmp) if n.endswith(".parquet") and not n.startswith(("_", "."))
    )
    files = sorted(n for n in os.listdir(tmp) if not n.startswith(("_", ".")))
    marker = {
        "format": FORMAT,
        "command": command,
        "rows": int(rows),
        "parts": names,
        "files": files,  # every file it wrote but its _* records: the rest is not ours
    }
    marker.update(extra or {})
    write_json_atomic(os.path.join(tmp, MARKER), marker)
    old = None
    if os.path.exists(out):
        check_out(out, command)
        old = _sibling(out, "old")
        os.rename(out, old)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.rename(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return marker


def _commit_remote(tmp: str, out: str, command: str, rows: int, extra: dict | None) -> dict:
    """:func:`commit` on an object store: the marker (one upload) switches readers to the
    new parts; then the records are copied up and the earlier objects deleted.

    A kill after the marker leaves the new parts read, with some records of the
    earlier output beside them until the command is rerun (a rerun replaces them).
    """
    from raysv.data import fs

    check_out(out, command)  # again: objects may have arrived while the command ran
    store, _ = fs.resolve(out)
    writer = tmp.rstrip("/").rsplit("/", 1)[1]
    names = fs.list_names(tmp)
    parts_ = [n for n in names if n.endswith(".parquet") and not n.startswith(("_", "."))]
    records = [n for n in names if n.startswith("_") and n != STAGING]
    marker = {
        "format": FORMAT,
        "command": command,
        "rows": int(rows),
        "parts": [f"{writer}/{n}" for n in parts_],
    }
    marker.update(extra or {})
    fs.write_bytes(fs.join(out, MARKER), json.dumps(marker, indent=1).encode())
    for n in records:  # small files (skipped rows, centroids, plots): where summaries name them
        store.copy_file(fs.resolve(fs.join(tmp, n))[1], fs.resolve(fs.join(out, n))[1])
    keep = {MARKER, writer, *records}
    for n in fs.list_names(out):  # the earlier output's objects, stopped writers' prefixes
        if n not in keep:
            uri = fs.join(out, n)
            if fs.is_dir(uri):
                fs.remove_tree(uri)
            else:
                store.delete_file(fs.resolve(uri)[1])
    return marker


@contextlib.contextmanager
def staged(out: str, command: str) -> Iterator[str]:
    """Check ``out`` (:func:`check_out`) and yield a fresh hidden sibling to write into
    (on an object store: a writer prefix ``<out>/w-<id>``).

    The caller calls :func:`commit` when its parts are complete; if the body
    raises, the sibling is removed and ``out`` is untouched.

    An ``out`` in the working copy of a run folder on object storage
    (:mod:`raysv.data.run_store`) is staged in the bucket, where Ray workers on any
    node can write, and :func:`commit` copies the output into the working copy.
    """
    from raysv.data import fs, run_store

    out = _local_path(out)
    remote = run_store.remote_of(out)
    if remote is not None:
        check_out(out, command)  # the working copy's folder too: commit replaces it
        with staged(remote, command) as tmp:
            yield tmp
        return
    if fs.is_local(out) and os.path.abspath(out) in (os.getcwd(), os.path.abspath(os.sep)):
        raise OutputError(
            f"{out}: {command} replaces its output folder whole, so it can't be the current "
            "folder or /; give a subfolder"
        )
    check_out(out, command)
    if not fs.is_local(out):
        tmp = fs.join(out, f"w-{uuid.uuid4().hex[:8]}")
        fs.write_bytes(fs.join(tmp, STAGING), f"{command}\n".encode())
        try:
            yield tmp
        finally:
            marker = read_marker(out) or {}
            name = tmp.rsplit("/", 1)[1]
            if not any(str(p).startswith(f"{name}/") for p in marker.get("parts", [])):
                fs.remove_tree(tmp)  # not committed (or no parts): nothing of it is read
        return
    _remove_leftovers(out)
    tmp = _sibling(out, "tmp")
    os.makedirs(tmp)
    try:
        yield tmp
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def complete(folder: str) -> bool:
    """True when ``folder`` holds a complete output of this raysv (raises for an older one)."""
    from raysv.data import fs

    folder = _local_path(folder)
    if not fs.is_local(folder):
        return bool(read_marker(folder))
    return bool(read_marker(folder)) if os.path.isdir(folder) else False


def write_json_atomic(path: str, obj, **kwargs) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename
    (on an object store: one upload).

    A kill leaves the old file or the new one, never a truncated one.
    """
    from raysv.data import fs

    fs.write_bytes(path, json.dumps(obj, **{"indent": 1, **kwargs}).encode())


def read_json(path: str) -> dict | None:
    """A JSON file of ours, or ``None`` if absent; a damaged one is one clear error."""
    from raysv.data import fs

    if not fs.is_local(path):
        if not fs.exists(path):
            return None
        data = fs.read_bytes(path)
    elif not os.path.isfile(path):
        return None
    else:
        with open(path, "rb") as f:
            data = f.read()
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(
            f"{path}: damaged ({exc.__class__.__name__}: {exc}); delete it to redo that step"
        ) from None


RUN_MARKER = "_raysv_run.json"
RUN_FORMAT = "raysv-run/1"


def claim_run(folder: str, command: str) -> str:
    """Make ``folder`` a run folder of this raysv, or check that it is one (to resume).

    A new or empty folder gets :data:`RUN_MARKER` (``{"format": RUN_FORMAT, ...}``);
    one holding that marker is resumed; one whose marker names another format
    (an older or newer raysv) or that holds files but no marker (another tool's,
    or a raysv from before run folders carried a format) is refused in one line
    that says how to go on. Returns the folder's absolute path.
    """
    folder = os.path.abspath(folder)
    ensure_folder(folder, command)
    path = os.path.join(folder, RUN_MARKER)
    rec = read_json(path)
    if rec is None:
        entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
        if entries:
            raise OutputError(
                f"{folder}: holds {len(entries)} file(s) (e.g. {entries[0]}) but no {RUN_MARKER}: "
                f"not a run folder of this raysv; give {command} a new or empty --out (a run "
                f"made by raysv before run folders carried a format can't be resumed: rerun it)"
            )
        write_json_atomic(path, {"format": RUN_FORMAT, "command": command})
        return folder
    check_run_format(rec, folder, command)
    return folder


def check_run_format(rec, where: str, command: str) -> None:
    """Refuse a run marker ``rec`` (read at ``where``) of another format than this raysv's."""
    if not isinstance(rec, dict) or rec.get("format") != RUN_FORMAT:
        found = rec.get("format") if isinstance(rec, dict) else None
        raise OutputError(
            f"{where}: a run folder of format {found!r}, this raysv reads {RUN_FORMAT!r}; "
            f"rerun {command} into a new --out (or resume it with the raysv that wrote it)"
        )


def ensure_folder(path: str, command: str = "raysv") -> str:
    """``os.makedirs(path, exist_ok=True)``, with one clear error when ``path`` (or a
    parent) is a file."""
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(
            f"{path}: exists and is not a folder (or sits under a file); {command} writes a "
            "folder there"
        ) from None
    return path
