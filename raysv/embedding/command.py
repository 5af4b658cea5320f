"""``raysv embed`` as a library call: check the options and the manifest, then embed
every utterance with the baseline or a trained encoder checkpoint.

The heavy imports are inside the functions: the checks come first (one clear line
before Ray starts), and importing this module stays cheap.
"""

from __future__ import annotations

import math
import os

from raysv.errors import RaysvError


def check_manifest(uri: str) -> None:
    """An utterances manifest ``embed`` can read: Parquet with utt_id, path, start_s, end_s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysv.data import fs

    if not fs.exists(uri) or fs.is_dir(uri):
        return  # embed_manifest names a missing manifest; a folder is checked by its reader
    fsys, path = fs.resolve(uri)
    try:
        cols = set(pq.read_schema(path, filesystem=fsys).names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RaysvError(f"{uri}: not a Parquet manifest ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ("utt_id", "path", "start_s", "end_s") if c not in cols]
    if missing:
        raise RaysvError(
            f"{uri}: the manifest lacks column(s) {', '.join(missing)}; make it with raysv ingest"
        )


def run_embed(
    manifest: str | None,
    out: str,
    *,
    checkpoint: str | None = None,
    model: str | None = None,
    audio: str | None = None,
    threads: int | None = None,
    max_seconds: float = 10.0,
    n_mels: int = 40,
    concurrency: int | None = None,
    device: str = "auto",
    force: bool = False,
    normalise: bool = False,
    average_sessions: str | None = None,
) -> dict:
    """Embed the utterances of ``manifest`` into shards in the folder ``out``.

    ``checkpoint``: an encoder checkpoint (best_model.pt of raysv pretrain), else the
    log-mel baseline (``n_mels``, always on CPU). ``average_sessions``: a folder for
    per-session mean embeddings too. Returns embed_manifest's summary dict.

    ``model``: an exported model folder (``raysv export``): embeds ``manifest`` or the
    audio files under ``audio`` with ONNX Runtime in this process, no Ray
    (:func:`raysv.export.embed.embed_local`; its card fixes the length policy).
    """
    if model or audio:
        if not model:
            raise RaysvError("--audio DIR embeds with an exported model: give --model DIR")
        clash = [
            f"--{k.replace('_', '-')}"
            for k, v in (("checkpoint", checkpoint), ("average_sessions", average_sessions))
            if v
        ]
        if clash:
            raise RaysvError(f"--model embeds with the exported model; drop {', '.join(clash)}")
        if max_seconds != 10.0:
            raise RaysvError(
                "--max-seconds: the exported model's card fixes the length policy "
                "(raysv export --max-seconds)"
            )
        if threads is not None and threads < 1:
            raise RaysvError(f"--threads must be at least 1, got {threads}")
        from raysv.export.embed import embed_local

        if manifest:
            check_manifest(manifest)
        return embed_local(
            model,
            out,
            manifest=manifest,
            audio=audio,
            normalise=normalise,
            force=force,
            threads=threads,
        )
    if not manifest:
        raise RaysvError("give --manifest U (or --model DIR with --manifest U or --audio DIR)")
    from raysv.embedding.baseline import BaselineEmbedder
    from raysv.embedding.extract import embed_manifest

    if not (math.isfinite(max_seconds) and max_seconds > 0):
        raise RaysvError(f"--max-seconds must be a positive number of seconds, got {max_seconds}")
    if n_mels < 3:
        raise RaysvError(f"--n-mels must be at least 3, got {n_mels}")
    if concurrency is not None and concurrency < 1:
        raise RaysvError(f"--concurrency must be at least 1 actor, got {concurrency}")
    check_manifest(manifest)
    if average_sessions and os.path.realpath(average_sessions) == os.path.realpath(out):
        raise RaysvError(f"--average-sessions {average_sessions} is the --out folder; give another")
    if checkpoint:
        from raysv.embedding.torch_embedder import TorchEmbedder
        from raysv.models.checkpoint import read_checkpoint

        read_checkpoint(checkpoint)  # missing, foreign or unsafe: one line, before Ray
        cls, kwargs = (
            TorchEmbedder,
            {"checkpoint": os.path.abspath(checkpoint), "max_seconds": max_seconds},
        )
    else:
        cls, kwargs = BaselineEmbedder, {"n_mels": n_mels, "max_seconds": max_seconds}
    s = embed_manifest(
        manifest,
        out,
        cls,
        kwargs,
        concurrency=concurrency,
        force=force,
        normalise=normalise,
        device=device if checkpoint else "cpu",  # the baseline embedder is numpy
    )
    if average_sessions:
        from raysv.embedding.extract import average_sessions as session_means

        s["sessions"] = session_means(out, manifest, average_sessions, force=force)
    return s
