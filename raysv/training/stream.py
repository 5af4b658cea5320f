"""The Ray Data side of training input: the dataset every stage streams, and each
worker's view of it. One of the library's Ray modules (Ray Data, and Ray Train's
dataset shard in :func:`worker_stream`); the featurisers it runs are the pure
functions of :mod:`raysv.training.data`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import pyarrow.parquet as pq

from raysv.data import fs
from raysv.training import unreadable
from raysv.training.data import PASS, InputSpec, featuriser


def build_dataset(shards: str, spec: InputSpec, ledger=None):
    """The Ray Dataset over training shards written by :func:`~raysv.training.data.write_shards`,
    featurised as ``spec`` says (:func:`~raysv.training.data.featuriser`).

    ``spec.epochs + spec.spare_epochs`` passes over the shards in one stream: workers take
    ``epochs`` epochs of steps from it, and the spare passes stand in for rows
    skipped as unreadable (:func:`~raysv.training.data.spare_epochs`), so the last epochs are not cut
    short. ``ledger`` counts those rows (:mod:`raysv.training.unreadable`).

    # [1] metadata rows only, streamed from Parquet (the driver never holds the table):
    #     read tasks of whole shard files (about READ_ROWS rows each), the files in a
    #     new seeded order every pass (no all-to-all barrier, unlike
    #     randomize_block_order), and workers add a local shuffle buffer; each row is
    #     tagged with its pass (``read_passes``);
    # [2] decoding and features run in stateless tasks; audio never touches the driver.
    # A read task's output is one block, and one block is one featurisation task:
    # blocks are re-cut to ``batch_rows`` rows first, so featurisation runs on every
    # free CPU.
    #
    # A resumed run (or a worker group restarted by Ray Train) streams its remaining
    # epochs from pass 0 again, so their crops and augmentation are those of the first
    # epochs: reproducible, though not what an uninterrupted run draws for them.
    """
    import ray.data

    # One execution streams every epoch: the shard files are listed once per epoch,
    # each epoch in its own seeded random order, and workers cut the stream into
    # epochs of a fixed step count (:class:`EpochStream`). With one training worker
    # blocks arrive in the planned order (:func:`data_config`); with several, only
    # roughly (parallel reads), so an epoch sees nearly, not exactly, every row
    # once; on a tiny corpus (tens of rows) neighbouring epochs mix noticeably. Restarting the
    # pipeline every epoch cost ~2 s on 2 CPUs (executor start, read, split).
    # Every row carries the pass it was read in (column ``pass``): with ``idx`` and the
    # seed it seeds the row's crops and augmentation (:func:`~raysv.training.data.row_generators`),
    # so a run's input depends on its seed, not on which task featurised a row.
    files = sorted(fs.walk_files(shards, (".parquet",))) if fs.is_dir(shards) else [shards]
    rng = np.random.default_rng(spec.seed)
    passes = max(1, spec.epochs) + spec.spare_epochs
    order = [{"file": str(f), PASS: p} for p in range(passes) for f in rng.permutation(files)]
    # A read task per file was ~10 % slower on the demo (945 tasks of 3 rows): files
    # are read READ_ROWS rows or so to a task (whole passes of a small corpus).
    per_task = max(1, READ_ROWS // max(1, _rows_in(files[0]))) if files else 1
    ds = (
        ray.data.from_items(order, override_num_blocks=max(1, -(-len(order) // per_task)))
        .map_batches(read_passes, batch_size=per_task, batch_format="pyarrow")  # [1]
        .repartition(target_num_rows_per_block=spec.batch_rows)
    )
    fn, kwargs = featuriser(spec)
    return ds.map_batches(  # [2]
        fn,
        fn_kwargs={**kwargs, "ledger": ledger},
        batch_size=spec.batch_rows,
        batch_format="numpy",
        num_cpus=spec.task_cpus,
    )


READ_ROWS = 4096  # shard rows one read task reads, about (whole files; metadata rows)


def _rows_in(parquet_file: str) -> int:
    """Rows of one Parquet file (its footer), local or on object storage."""
    store, path = fs.resolve(parquet_file)
    with store.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def read_passes(items):
    """Ray Data map: ``items`` (a table of ``file``, ``pass``) -> the rows of those Parquet
    shard files, each with its ``pass`` column (int64)."""
    import pyarrow as pa

    tables = []
    for f, p in zip(items["file"].to_pylist(), items[PASS].to_pylist(), strict=True):
        t = fs.read_table(f)
        tables.append(t.append_column(PASS, pa.array(np.full(t.num_rows, p, np.int64))))
    return pa.concat_tables(tables)


def exact_batches(batches, size: int):
    """Re-cut a stream of dict batches into batches of exactly ``size`` rows.

    ``batches`` yields dicts of tensors/arrays sharing dim 0. Ray Data 2.60's
    local shuffle buffer can hand out a short batch in mid-stream even with
    ``drop_last=True`` (its buffer regenerates only below half its minimum
    size, so with a one-batch buffer a take can find, e.g., 9 of 16 rows left).
    Under DDP one short batch on one rank is an all-gather of unequal sizes,
    which aborts gloo workers ("op.preamble.length <= op.nbytes"). Short pieces
    are joined with the following rows; a short remainder at the end of the
    stream is dropped. Full batches pass through untouched (no copy).
    """
    import torch

    def cat(parts: list[dict]) -> dict:
        keys = parts[0].keys()
        return {
            k: torch.cat([p[k] for p in parts])
            if isinstance(parts[0][k], torch.Tensor)
            else np.concatenate([p[k] for p in parts])
            for k in keys
        }

    def rows(b: dict) -> int:
        return len(next(iter(b.values())))

    held: list[dict] = []
    n_held = 0
    for b in batches:
        n = rows(b)
        if not held and n == size:
            yield b
            continue
        held.append(b)
        n_held += n
        while n_held >= size:
            joined = cat(held) if len(held) > 1 else held[0]
            yield {k: v[:size] for k, v in joined.items()}
            rest = {k: v[size:] for k, v in joined.items()}
            n_held -= size
            held = [rest] if n_held else []


class EpochStream:
    """A worker's data shard read ONCE for all epochs, handed out ``steps`` batches at a time.

    ``shard`` is the worker's Ray Train dataset shard of a dataset built with
    ``epochs`` copies of the data (:func:`build_dataset`); ``iter_kwargs`` go to
    ``iter_torch_batches``. Every batch has exactly ``batch_size`` rows
    (:func:`exact_batches`), so all ranks' collectives see equal shapes. The
    stream keeps prefetching across epoch boundaries (e.g. while rank 0 scores
    the dev set). A resumed run consumes only the epochs it has left; unread
    data is dropped with the iterator.
    """

    def __init__(self, shard, steps: int, **iter_kwargs):
        self.shard, self.steps, self.kwargs = shard, steps, iter_kwargs
        self._it = None
        self._timer: StepTimer | None = None

    def time_steps(self, on_timed: Callable[[float], None], skip: int = 1, steps: int = 3):
        """Call ``on_timed(seconds per step)`` once, after the ``skip + steps``-th batch of
        this invocation is asked for (the first ``skip`` include the pipeline's start)."""
        self._timer = StepTimer(on_timed, skip, steps)

    def epoch(self):
        """Yield the next epoch's batches (fewer than ``steps`` only where the stream ends)."""
        if self._it is None:
            # Ray's drop_last would drop a short LAST batch even where short batches
            # before it leave rows to join with: exact_batches drops the tail itself.
            kwargs = {**self.kwargs, "drop_last": False}
            self._it = exact_batches(
                self.shard.iter_torch_batches(**kwargs), self.kwargs["batch_size"]
            )
        for _ in range(self.steps):
            if self._timer is not None:
                self._timer.tick()
            try:
                batch = next(self._it)
            except StopIteration:  # no step followed that tick
                if self._timer is not None:
                    self._timer.end(last_step_done=False)
                return
            yield batch
        if self._timer is not None:  # a first epoch shorter than the timing: what it had
            self._timer.end()


class StepTimer:
    """Times the batches handed out (so data and compute) to give a first estimate.

    ``tick()`` is called when a batch is asked for, i.e. when the previous step
    is done; after ``skip`` warm-up steps, the mean of the next ``steps`` goes to
    ``on_timed`` once. Errors of the callback are logged, never raised: an
    estimate must not stop a run.
    """

    def __init__(self, on_timed: Callable[[float], None], skip: int, steps: int):
        self.on_timed, self.skip, self.steps = on_timed, skip, steps
        self.ticks: list[float] = []
        self.done = False

    def tick(self) -> None:
        if self.done:
            return
        self.ticks.append(time.monotonic())
        if len(self.ticks) == self.skip + self.steps + 1:
            self._report(self.skip)

    def end(self, last_step_done: bool = True) -> None:
        """The first epoch ended (only its steps are timed: dev scoring follows it);
        ``last_step_done`` False where the stream ran out at the last tick (that tick
        ended the last step: no other is added)."""
        if self.done:
            return
        if last_step_done:
            self.ticks.append(time.monotonic())  # the last step is done
        if len(self.ticks) >= self.skip + 2:
            self._report(self.skip)
        elif len(self.ticks) >= 2:  # too short to skip the warm-up: an upper bound
            self._report(0)
        self.done = True

    def _report(self, first: int) -> None:
        self.done = True
        per_step = (self.ticks[-1] - self.ticks[first]) / (len(self.ticks) - 1 - first)
        try:
            self.on_timed(per_step)
        except Exception as exc:  # noqa: BLE001 - progress only
            logging.getLogger("raysv").warning("no duration estimate: %s", exc)


def worker_stream(
    steps: int, per_worker_batch: int, device, seed: int | None = None
) -> EpochStream:
    """This Ray Train worker's :class:`EpochStream` over its ``"train"`` shard.

    Batches of ``per_worker_batch`` rows on ``device``, two prefetched, rows mixed
    across blocks by a local shuffle buffer of one batch (a larger one would move
    more rows across epoch boundaries), seeded by ``seed`` (None: unseeded).
    """
    import ray.train

    return EpochStream(
        ray.train.get_dataset_shard("train"),
        steps,
        batch_size=per_worker_batch,
        drop_last=True,
        prefetch_batches=2,
        local_shuffle_buffer_size=per_worker_batch,
        local_shuffle_seed=seed,
        device=device,
    )


def data_config(num_workers: int):
    """Ray Train's ``DataConfig`` for a stage's training stream: Ray's default ingest
    options, with the blocks' order kept (``preserve_order``) when one worker trains.

    With one worker a run is then reproducible: its rows arrive in the order the seeded
    pass plan lists them, and each row's randomness is seeded too
    (:func:`build_dataset`). With several workers Ray's split hands blocks to whichever
    worker asks first, so which rows meet in a batch varies between runs; order is not
    preserved there (with ``preserve_order`` a 2-worker run lost a worker to a crash in
    Ray 2.60 on this machine).
    """
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = num_workers == 1
    return ray.train.DataConfig(execution_options=options)


# ---- the unreadable-row ledger of a run (raysv.training.unreadable): its Ray calls


def start_ledger(max_share: float):
    """A new :class:`Ledger` actor (no CPU reserved), owned by the calling driver."""
    import ray

    return ray.remote(num_cpus=0)(unreadable.Ledger).remote(max_share)


def record(ledger, n_rows: int, bad: list) -> None:
    """Count a featurised batch of ``n_rows`` rows, of which ``bad`` (``[(row, AudioError)]``)
    were skipped, towards ``ledger`` (None: don't).

    A batch without a skipped row is sent fire-and-forget; one with skipped rows
    waits for the ledger's answer and raises :class:`UnreadableInputError` (failing
    the stream) when most rows read so far were unreadable.
    """
    if ledger is None:
        return
    if not bad:
        ledger.add.remote(n_rows, [], [])
        return
    import ray

    examples = [str(exc) for _, exc in bad[: unreadable.EXAMPLES]]
    if ray.get(ledger.add.remote(n_rows, [exc.path for _, exc in bad], examples)):
        snap = ray.get(ledger.snapshot.remote())
        raise unreadable.UnreadableInputError(
            unreadable.message(snap, "rows", "most of them: the stream stopped")
        )


def snapshot(ledger) -> dict | None:
    """``{"rows": skipped row reads, "read", "files", "examples"}`` so far (``files``: the
    distinct unreadable files this invocation met; the rest count earlier ones too):
    zeros for ``ledger`` None, None if the ledger is gone (its node died)."""
    if ledger is None:
        return unreadable.zero_counts()
    import ray

    try:
        return ray.get(ledger.snapshot.remote())
    except ray.exceptions.RayActorError as exc:
        unreadable.log.warning(
            "the unreadable-rows ledger is gone (%s); rows are no longer counted", exc
        )
        return None
