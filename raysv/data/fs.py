"""URI handling: local paths and object stores (s3://, gs://, ...) via pyarrow.fs.

All table I/O and directory listing goes through these helpers, so the rest of
raysv never branches on the kind of storage.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysv.errors import ManifestError


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return "://" not in uri or uri.startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path within it)`` for a path or URI."""
    if is_local(uri):
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{uri}: cannot open this URI: {exc}") from exc


def join(base: str, *parts: str) -> str:
    """Join path components for local paths and URIs alike."""
    if is_local(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def walk_files(root: str, suffixes: tuple[str, ...]) -> Iterator[str]:
    """Yield files under ``root`` (recursively) whose names end with one of ``suffixes``.

    Local folders are walked with ``os.scandir`` (streaming, sorted per folder);
    object stores are listed through pyarrow. Returned paths are full local
    paths or full URIs.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    if is_local(root):
        _, base = resolve(root)
        if not os.path.isdir(base):
            raise ManifestError(f"{root}: not a folder")
        yield from _walk_local(base, suffixes)
        return
    fs, base = resolve(root)
    info = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    scheme = root.split("://", 1)[0]
    for item in sorted(info, key=lambda i: i.path):
        if item.type == pafs.FileType.File and item.path.lower().endswith(suffixes):
            yield f"{scheme}://{item.path}"


def _walk_local(folder: str, suffixes: tuple[str, ...]) -> Iterator[str]:
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=True):
            yield from _walk_local(entry.path, suffixes)
        elif entry.name.lower().endswith(suffixes):
            yield entry.path


def open_input(uri: str):
    """Open a file for binary reading (a seekable file object); ManifestError if missing."""
    try:
        if is_local(uri):
            return open(resolve(uri)[1], "rb")
        fs, path = resolve(uri)
        return fs.open_input_file(path)
    except FileNotFoundError as exc:
        raise ManifestError(f"{uri}: no such file") from exc
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"{uri}: cannot open ({exc})") from exc


def read_text(uri: str) -> str:
    """A UTF-8 text file; binary content is one error naming the file and the line."""
    with open_input(uri) as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            f"{uri}: not UTF-8 text (byte {exc.start}, line {line}): is it the right file?"
        ) from None


def parquet_files(uri: str) -> list[str]:
    """The Parquet files of a file or folder: a folder is an output folder and yields
    only the parts its completion marker lists (:mod:`raysv.data.outputs`), on local
    disks and object stores alike."""
    from raysv.data.outputs import parts

    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise ManifestError(f"{uri}: no such file or folder")
    if kind != pafs.FileType.Directory:
        return [uri]
    files = parts(uri)
    if not files:
        raise ManifestError(f"{uri}: no .parquet files in this folder")
    return files


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file or folder of Parquet shards; errors name the URI.

    A folder must be a complete output folder: only the parts its marker
    lists are read (:func:`parquet_files`).
    """
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise ManifestError(f"{uri}: no such file or folder")
    try:
        if kind == pafs.FileType.Directory:
            files = [resolve(f)[1] for f in parquet_files(uri)]
            return pq.ParquetDataset(files, filesystem=fs).read(columns=columns)
        return pq.read_table(path, filesystem=fs, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{uri}: cannot read as Parquet: {exc}") from exc


def write_table(table: pa.Table, uri: str) -> None:
    """Write ``table`` to a Parquet file at ``uri``, never leaving a partial file there.

    Local: a temporary file renamed into place. Object store: one upload, which
    the store makes visible only when it completes (a rename there is a copy).
    """
    store, path = resolve(uri)
    if not is_local(uri):
        pq.write_table(table, path, filesystem=store)
        return
    parent = os.path.dirname(path)
    if parent:
        store.create_dir(parent, recursive=True)
    tmp = path + ".tmp"
    pq.write_table(table, tmp, filesystem=store)
    store.move(tmp, path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to the file ``uri`` whole or not at all (as :func:`write_table`)."""
    store, path = resolve(uri)
    if not is_local(uri):
        with store.open_output_stream(path) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # unique per call, also across threads
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_bytes(uri: str) -> bytes:
    """The bytes of the file ``uri``; ManifestError naming it if it is missing."""
    with open_input(uri) as f:
        return f.read()


def list_names(uri: str) -> list[str]:
    """Names of the entries (files and folders) directly in folder ``uri``, sorted;
    ``[]`` when it does not exist (an object store has no empty folders)."""
    store, path = resolve(uri)
    info = store.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(i.base_name for i in info)


def remove_tree(uri: str) -> None:
    """Delete folder ``uri`` and everything under it (nothing if it is absent)."""
    store, path = resolve(uri)
    if store.get_file_info(path).type == pafs.FileType.NotFound:
        return
    store.delete_dir(path)


def upload_folder(local: str, uri: str) -> None:
    """Copy the files directly in local folder ``local`` to folder ``uri``."""
    for name in sorted(os.listdir(local)):
        src = os.path.join(local, name)
        if os.path.isfile(src):
            with open(src, "rb") as f:
                write_bytes(join(uri, name), f.read())
