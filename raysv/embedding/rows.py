"""Worker side of ``raysv embed``: read a batch's audio, skipping (and recording)
unreadable files instead of failing the whole job.

An actor that meets a bad file writes one JSON line per skipped row to
``<out>/_skipped-<id>.jsonl`` (names starting with ``_`` are not read as
embeddings); the driver reports them when the job ends.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable

import numpy as np

from raysv.audio import io
from raysv.data import fs

log = logging.getLogger("raysv")

SKIPPED_PREFIX = "_skipped-"


def read_batch(
    batch: dict[str, np.ndarray], load: Callable[[str, float | None, float | None], object]
):
    """``(kept row indices, loaded items, skipped rows)`` of a batch.

    ``load(path, start_s, end_s)`` is called per row; a row whose audio raises
    :class:`~raysv.errors.AudioError` is skipped and returned as
    ``{"utt_id", "path", "reason"}``.
    """
    utts, paths = batch["utt_id"], batch["path"]
    rows = zip(paths, batch["start_s"], batch["end_s"], strict=True)
    keep, items, bad = io.each_readable(
        rows, lambda r: load(str(r[0]), io.bound(r[1]), io.bound(r[2]))
    )
    skipped = [
        {"utt_id": str(utts[i]), "path": str(paths[i]), "reason": exc.reason} for i, exc in bad
    ]
    return keep, items, skipped


def record_skipped(folder: str | None, skipped: list[dict]) -> None:
    """Append ``skipped`` rows to this process's ``_skipped-*.jsonl`` under ``folder``."""
    if not skipped:
        return
    for s in skipped:
        log.warning("embed: skipped %s (%s): %s", s["utt_id"], s["path"], s["reason"])
    if folder is None:
        return
    name = f"{SKIPPED_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
    fs.write_bytes(fs.join(folder, name), "".join(json.dumps(s) + "\n" for s in skipped).encode())


def read_skipped(folder: str) -> list[dict]:
    """Every row the actors skipped under ``folder``, in file-name order."""
    rows: list[dict] = []
    for name in fs.list_names(folder):  # [] for no folder
        if name.startswith(SKIPPED_PREFIX):
            text = fs.read_bytes(fs.join(folder, name)).decode("utf-8")
            rows.extend(json.loads(line) for line in text.splitlines() if line.strip())
    return rows
