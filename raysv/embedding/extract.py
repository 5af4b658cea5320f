"""Driver: embed every utterance of a manifest with Ray Data and write Parquet shards.

# [1] the manifest is read as a Ray Dataset (rows: utterance metadata only);
# [2] ``map_batches`` runs a callable class, built once per actor, over a
#     pool of ``concurrency`` actors;
# [3] embeddings are written as Parquet shards, never gathered on the driver;
# [4] optionally L2-normalised per row, and/or averaged per ``session_id``
#     (rows tagged with their session, then a group-by, both in Ray Data).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable

from raysv.data import fs, outputs
from raysv.embedding.rows import read_skipped
from raysv.errors import ConfigError, ManifestError

log = logging.getLogger("raysv")


# Ray Data's file listing and read/write tasks each ask for one CPU: the
# embedding actors must leave one free, or the pipeline waits forever.
IO_CPUS = 1.0


def actor_resources(
    concurrency: int | None, cpus_per_actor: float | None, gpus_only: bool = False
) -> tuple[int, float]:
    """Actor count and CPUs per actor that leave room for Ray Data's I/O tasks.

    Defaults: one actor per CPU of the nodes that can hold them (``gpus_only``: the
    nodes with GPUs, where GPU actors must go), sized by :func:`actor_cpus`.
    """
    import ray

    # The cluster's nodes, not what is free this instant: a previous pipeline's
    # actors may still be shutting down, and Ray queues the new ones meanwhile.
    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    nodes = [
        float(r.get("CPU", 0.0))
        for r in alive
        if r.get("CPU", 0.0) > 0 and (r.get("GPU", 0.0) > 0 or not gpus_only)
    ] or [float(ray.cluster_resources().get("CPU", 1.0))]
    total = sum(nodes)
    if concurrency is None:
        concurrency = max(1, int(total))
    if cpus_per_actor is None:
        cpus_per_actor = actor_cpus(nodes, concurrency)
    if concurrency * cpus_per_actor > total - IO_CPUS + 1e-9:
        raise ConfigError(
            f"{concurrency} actors x {cpus_per_actor} CPUs leave no CPU for reading data "
            f"(cluster has {total:g} CPUs); lower concurrency or num_cpus_per_actor"
        )
    return concurrency, cpus_per_actor


def actor_cpus(node_cpus: list[float], concurrency: int) -> float:
    """CPUs per embedding actor such that, wherever Ray places ``concurrency`` actors on
    nodes with ``node_cpus`` CPUs, some node keeps ``IO_CPUS`` free for Ray Data's
    read/write tasks: the actors take all but ``IO_CPUS`` per node in total, so the
    free CPUs add up to one per node and cannot all be under one.

    One node of 2 CPUs and 2 actors: 0.5 each. Two nodes of 3 and 6 actors: 2/3 each,
    not 5/6 (which left half a CPU on each node, so that the one-CPU read task could
    start nowhere and the job waited forever). Raises ConfigError where that leaves
    an actor under 0.1 CPU (nodes of one CPU): give the count and CPUs per actor.
    """
    fits = (sum(node_cpus) - len(node_cpus) * IO_CPUS) / concurrency
    if fits < 0.1:
        raise ConfigError(
            f"{concurrency} embedding actors on nodes of {sorted(node_cpus)} CPUs can't keep a "
            "CPU free for reading data; give the actor count and CPUs per actor (raysv embed "
            "--concurrency)"
        )
    return math.floor(fits * 1e4) / 1e4  # rounded down: never over the budget


def actor_gpus(device: str, concurrency: int) -> float:
    """GPUs per embedding actor: an equal share of the cluster's GPUs (at most one each)."""
    import ray

    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"device must be auto, cpu or gpu; got {device!r}")
    total = float(ray.cluster_resources().get("GPU", 0))
    if device == "gpu" and total == 0:
        raise ConfigError("embedding device 'gpu' asked for, but the Ray cluster has no GPUs")
    if device == "cpu" or total == 0:
        return 0.0
    return min(1.0, total / concurrency)


def embed_manifest(
    manifest: str,
    out_dir: str,
    embedder_cls: type,
    embedder_kwargs: dict | None = None,
    concurrency: int | None = None,
    batch_size: int = 32,
    num_cpus_per_actor: float | None = None,
    force: bool = False,
    on_done: Callable[[dict], None] | None = None,
    normalise: bool = False,
    device: str = "auto",
) -> dict:
    """Embed all rows of ``manifest`` into ``out_dir`` (Parquet shards).

    Skips the work if ``out_dir`` is a complete output (:mod:`raysv.data.outputs`),
    unless ``force``; refuses an ``out_dir`` holding files raysv did not write; the
    parts appear at ``out_dir`` only when all are written. ``device``: ``"auto"`` gives the actors the cluster's GPUs where it has
    them (each an equal share: decoding and features stay on the actor's CPU
    share, the forward pass runs on the GPU), ``"cpu"`` never, ``"gpu"`` always.
    ``embedder_cls`` is built with ``embedder_kwargs`` plus ``skipped_to`` (the
    output folder), where it records rows whose audio it could not read (see
    :mod:`raysv.embedding.rows`). Returns a summary with rows, seconds,
    utterances/s and the count of unreadable rows skipped.
    """
    if not force and outputs.complete(out_dir):
        log.info("embeddings in %s already complete; skipping (force to redo)", out_dir)
        return {"out": out_dir, "skipped": True}
    if not fs.exists(manifest):
        raise ManifestError(f"{manifest}: no such utterances manifest")
    with outputs.staged(out_dir, "raysv embed") as tmp:
        return _embed_into(
            manifest,
            out_dir,
            tmp,
            embedder_cls,
            embedder_kwargs,
            concurrency,
            batch_size,
            num_cpus_per_actor,
            normalise,
            device,
        )


def _embed_into(
    manifest,
    out_dir,
    tmp,
    embedder_cls,
    embedder_kwargs,
    concurrency,
    batch_size,
    num_cpus_per_actor,
    normalise,
    device,
) -> dict:
    """:func:`embed_manifest`'s work: parts into ``tmp``, committed to ``out_dir`` when whole."""
    import ray.data

    from raysv.runtime import ensure_ray

    ensure_ray()
    gpus = actor_gpus(device, concurrency or 1)
    concurrency, num_cpus_per_actor = actor_resources(
        concurrency, num_cpus_per_actor, gpus_only=gpus > 0
    )
    gpus = actor_gpus(device, concurrency)
    t0 = time.monotonic()
    # The path within its file system, read through that file system: a resolved
    # s3:// path alone ("bucket/key") would be taken for a local one.
    store, path = fs.resolve(manifest)
    ds = ray.data.read_parquet(
        path, filesystem=store, columns=["utt_id", "path", "start_s", "end_s"]
    )  # [1]
    # A manifest file is often one block: split it so that every actor gets work
    # (rows are small metadata, so this shuffle is cheap). Not sorted by duration:
    # tried (2026-11-23), a range-partition by duration made the CPU benchmark 2.6x
    # slower (48.6 vs 18.4 s, back to back); Ray's sort of a one-block manifest gives
    # one block (one actor busy), but sorting first and splitting after was still
    # slower (35.7 vs 22.5 s) for reasons not found.
    ds = ds.repartition(max(4 * concurrency, 1))
    kwargs = dict(embedder_kwargs or {})
    kwargs.setdefault("skipped_to", tmp)  # unreadable rows: see rows.py
    ds = ds.map_batches(  # [2]
        embedder_cls,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus_per_actor,
        num_gpus=gpus,
        batch_format="numpy",
    )
    if normalise:
        ds = ds.map_batches(normalise_rows, batch_format="pyarrow")  # [4]
    # The staging folder is made by raysv, not Ray Data (which deletes a folder it made
    # if no row was written): the record of skipped rows survives a job that embedded nothing.
    write_parquet(ds, tmp)  # [3]
    skipped = read_skipped(tmp)
    n = _rows(tmp)
    if n == 0:
        first = f" (the first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise ManifestError(f"{manifest}: no utterance could be embedded{first}")
    outputs.commit(tmp, out_dir, "raysv embed", n, {"unreadable": len(skipped)})
    secs = time.monotonic() - t0
    summary = {
        "out": out_dir,
        "rows": n,
        "seconds": round(secs, 2),
        "utts_per_s": round(n / max(secs, 1e-9), 1),
        "gpus_per_actor": gpus,
        # rows whose audio could not be read: skipped, not fatal (listed in _skipped-*.jsonl)
        "unreadable": len(skipped),
        "unreadable_examples": skipped[:5],
    }
    if skipped:
        log.warning(
            "embed: %d utterance(s) skipped, missing or unreadable audio (first: %s: %s); all listed in "
            "%s/_skipped-*.jsonl",
            len(skipped),
            skipped[0]["path"],
            skipped[0]["reason"],
            out_dir,
        )
    log.info("embedded %d utterances in %.1fs (%.1f/s)", n, secs, n / max(secs, 1e-9))
    return summary


def write_parquet(ds, folder: str) -> None:
    """Write Ray Data dataset ``ds`` as Parquet files into ``folder`` (a local path or an
    object-store URI, reached through its pyarrow file system), rows in the dataset's order.

    The same input gives the same files with the same rows in the same order
    (k-means draws its seeded sample by row position: a pool written in another
    order clusters differently). Blocks reach the write tasks in order
    (``preserve_order``), and each task writes its blocks as one file named by its
    task index with ``pq.write_table`` (:class:`OrderedParquetSink`): Ray's own
    Parquet writer writes with pyarrow threads, which can reorder rows in a file.
    """
    ds.context.execution_options.preserve_order = True
    ds.write_datasink(OrderedParquetSink(folder))


@functools.cache
def _ordered_sink_class() -> type:
    """:class:`OrderedParquetSink`'s class, a ``ray.data.Datasink`` (built on first use:
    importing this module does not import Ray)."""
    from ray.data import Datasink

    class OrderedParquetSink(Datasink):
        """Writes each write task's blocks, in order, to one Parquet file
        ``part-<task index>.parquet`` in ``folder`` (a retried task rewrites its own file)."""

        def __init__(self, folder: str):
            self.folder = folder

        def get_name(self) -> str:
            return "OrderedParquet"

        def write(self, blocks, ctx) -> None:
            import pyarrow as pa
            import pyarrow.parquet as pq
            from ray.data.block import BlockAccessor

            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                return
            table = pa.concat_tables(tables, promote_options="default")
            store, path = fs.resolve(self.folder)
            store.create_dir(path, recursive=True)
            pq.write_table(table, f"{path}/part-{ctx.task_idx:06d}.parquet", filesystem=store)

    return OrderedParquetSink


def OrderedParquetSink(folder: str):  # noqa: N802 - builds the class's instance
    """A Ray Data datasink writing each write task's blocks, in order, to one Parquet file
    named by the task's index in ``folder`` (see :func:`write_parquet`)."""
    return _ordered_sink_class()(folder)


def _rows(folder: str) -> int:
    """Rows in the Parquet files of a staging folder (from their footers)."""
    import pyarrow.parquet as pq

    store, _ = fs.resolve(folder)
    return sum(
        pq.ParquetFile(fs.resolve(fs.join(folder, n))[1], filesystem=store).metadata.num_rows
        for n in fs.list_names(folder)
        if n.endswith(".parquet") and not n.startswith(("_", "."))
    )


def normalise_rows(batch):
    """Embeddings batch (pyarrow) -> the same rows with unit-length ``embedding``."""
    from raysv.data.schema import embeddings_table
    from raysv.evaluation.scoring import embedding_matrix, l2_normalise

    ids, emb = embedding_matrix(batch)
    return embeddings_table(ids, l2_normalise(emb))


class SessionTagger:
    """Ray Data callable: adds ``session_id`` to embedding rows from a ``(utt_id, session_id)`` table."""

    def __init__(self, keys: str):
        t = fs.read_table(keys)
        self.session = dict(
            zip(t.column("utt_id").to_pylist(), t.column("session_id").to_pylist(), strict=True)
        )

    def __call__(self, batch):
        import pyarrow as pa

        ids = batch.column("utt_id").to_pylist()
        return batch.append_column(
            "session_id", pa.array([self.session.get(u, u) for u in ids], pa.string())
        )


def _session_mean(group):
    """All rows of one session (pyarrow) -> one row: ``utt_id`` = the session id, mean embedding.

    Utterances without a session form a session of their own. Rows are taken in
    ``utt_id`` order (a group's rows arrive in any order; a float sum depends on it).
    """
    import pyarrow as pa

    from raysv.data.schema import embeddings_table
    from raysv.evaluation.scoring import embedding_matrix

    _, emb = embedding_matrix(group.sort_by("utt_id"))
    out = embeddings_table([group.column("session_id")[0].as_py()], emb.mean(axis=0)[None])
    return out.append_column("n_utts", pa.array([group.num_rows], pa.int32()))


def average_sessions(embeddings: str, manifest: str, out_dir: str, force: bool = False) -> dict:
    """Average the embeddings of each ``session_id`` of ``manifest`` (the iterative paper
    averages per video) and write ``utt_id`` (= session id), ``embedding``, ``n_utts`` shards.

    Runs in Ray Data (an actor tags rows with their session from a small key
    table, then a group-by): the driver never holds the embeddings.
    Utterances whose session is null count as their own session. Skipped when
    ``out_dir`` is a complete output, unless ``force``; written like :func:`embed_manifest`.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from raysv.runtime import ensure_ray

    if not force and outputs.complete(out_dir):
        return {"out": out_dir, "skipped": True}
    files = fs.parquet_files(embeddings)  # a complete output only
    with outputs.staged(out_dir, "raysv embed --average-sessions") as tmp:
        ensure_ray()
        t0 = time.monotonic()
        man = fs.read_table(manifest, ["utt_id", "session_id"])
        sessions = pc.coalesce(man["session_id"], man["utt_id"])
        keys = fs.join(tmp, "_sessions.parquet")  # O(N) metadata, read once per actor
        fs.write_table(pa.table({"utt_id": man["utt_id"], "session_id": sessions}), keys)
        n = _average_into(files, keys, tmp)
        outputs.commit(tmp, out_dir, "raysv embed --average-sessions", n)
    log.info("averaged embeddings into %d sessions in %.1fs", n, time.monotonic() - t0)
    return {"out": out_dir, "sessions": n, "seconds": round(time.monotonic() - t0, 2)}


def _average_into(files: list[str], keys: str, tmp: str) -> int:
    """Session means of the embeddings in ``files`` (paths or URIs of one file system) as
    Parquet parts in ``tmp``; their rows."""
    import ray.data

    store, _ = fs.resolve(files[0])
    paths = [fs.resolve(f)[1] for f in files]
    emb = ray.data.read_parquet(paths, filesystem=store, columns=["utt_id", "embedding"])
    tagged = emb.map_batches(
        SessionTagger,
        fn_constructor_kwargs={"keys": keys},
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
    )
    means = tagged.groupby("session_id").map_groups(_session_mean, batch_format="pyarrow")
    write_parquet(means, tmp)
    return _rows(tmp)
