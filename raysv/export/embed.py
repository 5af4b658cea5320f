"""``raysv embed --model DIR``: embed a manifest or a folder of audio with an exported
model on ONNX Runtime, in this process (no Ray), for jobs small enough for one machine.

The output is the folder ``raysv embed`` writes (Parquet with ``utt_id`` and
``embedding``, ``_SUCCESS``, ``_skipped-*.jsonl`` for unreadable rows), so
``raysv evaluate`` and ``raysv cluster`` read it as they read the Ray path's.
"""

from __future__ import annotations

import os
import time

import numpy as np

from raysv.errors import ManifestError, RaysvError

COMMAND = "raysv embed"


def folder_rows(folder: str) -> list[tuple]:
    """``[(utt_id, path, None, None)]`` for the audio files under ``folder`` (recursively;
    ``utt_id``: the path relative to ``folder``, as VoxCeleb trial lists name files)."""
    from raysv.audio.io import AUDIO_SUFFIXES
    from raysv.data import fs

    if not os.path.isdir(folder):
        raise RaysvError(f"--audio {folder}: no such folder")
    paths = sorted(fs.walk_files(folder, AUDIO_SUFFIXES))
    if not paths:
        raise ManifestError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return [(os.path.relpath(p, folder), p, None, None) for p in paths]


def manifest_rows(manifest: str) -> list[tuple]:
    """``[(utt_id, path, start_s, end_s)]`` of an utterances manifest (path or URI)."""
    from raysv.data import fs

    t = fs.read_table(manifest, ["utt_id", "path", "start_s", "end_s"])
    return list(zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True))


def embed_local(
    model: str,
    out: str,
    *,
    manifest: str | None = None,
    audio: str | None = None,
    normalise: bool = False,
    force: bool = False,
    threads: int | None = None,
    batch: int = 32,
) -> dict:
    """Embed every row of ``manifest`` (or every audio file under ``audio``) with the
    exported ``model`` into the output folder ``out``; returns the summary
    ``raysv embed`` prints."""
    import pyarrow as pa

    from raysv.audio import io
    from raysv.data import fs, outputs
    from raysv.data.schema import embeddings_table
    from raysv.embedding.rows import record_skipped
    from raysv.evaluation.scoring import l2_normalise
    from raysv.export.runtime import ExportedModel

    if bool(manifest) == bool(audio):
        raise RaysvError("give --manifest U or --audio DIR (one of them)")
    if not force and outputs.complete(out):
        return {"out": out, "skipped": True}
    m = ExportedModel(model, threads=threads)
    rows = manifest_rows(manifest) if manifest else folder_rows(audio)
    t0 = time.monotonic()
    with outputs.staged(out, COMMAND) as tmp:
        keep, waves, bad = io.each_readable(
            rows, lambda r: m.read(r[1], io.bound(r[2]), io.bound(r[3]))
        )
        skipped = [
            {"utt_id": str(rows[i][0]), "path": str(rows[i][1]), "reason": e.reason} for i, e in bad
        ]
        record_skipped(tmp, skipped)
        if not waves:
            first = f" (the first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
            raise ManifestError(f"{manifest or audio}: no utterance could be embedded{first}")
        emb = m.embed(waves, batch)
        if normalise:
            emb = l2_normalise(emb)
        table: pa.Table = embeddings_table([rows[i][0] for i in keep], emb.astype(np.float32))
        fs.write_table(table, fs.join(tmp, "part-00000.parquet"))
        outputs.commit(
            tmp, out, COMMAND, table.num_rows, {"unreadable": len(skipped), "model": model}
        )
    secs = time.monotonic() - t0
    return {
        "out": out,
        "rows": table.num_rows,
        "seconds": round(secs, 2),
        "utts_per_s": round(table.num_rows / max(secs, 1e-9), 1),
        "engine": "onnxruntime (cpu, no Ray)",
        "unreadable": len(skipped),
        "unreadable_examples": skipped[:5],
    }
