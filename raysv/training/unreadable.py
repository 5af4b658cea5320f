"""Training rows whose audio turned unreadable during a run: counted, and a limit.

A file that goes bad after the import (a truncated copy, a vanished mount)
costs its row, not the run: the featurisation tasks skip it
(:func:`raysv.audio.io.each_readable`). But a run that silently trains on a
fraction of its data, or on nothing because the storage went away, wastes the
compute too. So every featurisation task reports the rows it read and skipped
to one small actor per run (the ``Ledger``), and:

- rank 0 checks the skipped share against ``train.max_unreadable_share``
  every 100 steps, at the start (after a restart or a resume) and at the end
  of each epoch (after its checkpoint), and stops the run with an
  :class:`UnreadableInputError` naming files;
- a task that finds most rows unreadable (above :data:`EMERGENCY_SHARE` of at
  least :data:`EMERGENCY_MIN_READ`) stops the stream itself, since a worker
  that receives no batch never reaches a check;
- the counts travel in the checkpoints, so a second invocation of the same
  run starts from them and stops at once if nothing was fixed.

Driver: :func:`start_ledger` before the trainer, :func:`snapshot` after it.
Featurisation tasks: :func:`record`. Workers: :class:`Tally`. The three Ray calls
(start the actor, record a batch, read the counts) live with the rest of the
Ray Data input pipeline in :mod:`raysv.training.stream`; they are re-exported here.
"""

from __future__ import annotations

import logging

from raysv.errors import RaysvError

log = logging.getLogger("raysv")

EXAMPLES = 5  # unreadable rows named in messages and summaries
MAX_FILES = 100_000  # distinct unreadable files remembered (the count stops there)
EMERGENCY_SHARE = 0.5  # a task stops the stream above max(this, the limit) ...
EMERGENCY_MIN_READ = 200  # ... of at least this many rows read


class UnreadableInputError(RaysvError):
    """Too many training rows had unreadable audio (the run stops; its checkpoints stay)."""


def zero_counts() -> dict:
    return {"rows": 0, "read": 0, "files": 0, "examples": []}


class Ledger:
    """Row reads and skipped row reads of one run (a Ray actor), plus what an earlier
    invocation of the same run counted (``prior``, from its checkpoint)."""

    def __init__(self, max_share: float):
        self.max_share = max_share
        self.rows, self.read, self.files, self.examples = 0, 0, set(), []
        self.prior = zero_counts()

    def add(self, read: int, paths: list[str], examples: list[str]) -> bool:
        """Count a batch; returns whether the stream should stop (see the module)."""
        self.read += read
        self.rows += len(paths)
        if len(self.files) < MAX_FILES:
            self.files.update(paths)
        for e in examples:
            if len(self.examples) < EXAMPLES and e not in self.examples:
                self.examples.append(e)
        snap = self.snapshot()
        limit = max(EMERGENCY_SHARE, self.max_share)
        return snap["read"] >= EMERGENCY_MIN_READ and limit < 1 and share(snap) > limit

    def set_prior(self, prior: dict) -> None:
        """Counts of earlier invocations (set, not added: every restart may send them)."""
        self.prior = {**zero_counts(), **prior}

    def snapshot(self) -> dict:
        p = self.prior
        examples = list(p["examples"])
        examples += [e for e in self.examples if e not in examples]
        return {
            "rows": p["rows"] + self.rows,
            "read": p["read"] + self.read,
            "files": len(self.files),  # distinct, seen by this invocation
            "examples": examples[:EXAMPLES],
        }


def share(snap: dict) -> float:
    """Skipped row reads over row reads (0 before any row is read)."""
    return snap["rows"] / max(snap["read"], snap["rows"], 1)


def _files(n: int) -> str:
    return "" if n == 0 else f" ({n} file{'' if n == 1 else 's'})"


def message(snap: dict, unit: str, why: str) -> str:
    """The one-line error for too many unreadable rows in ``snap`` (``why``: which limit)."""
    return (
        f"{snap['rows']} reads of training {unit}{_files(snap['files'])} had unreadable audio "
        f"({share(snap):.1%} of those read; {why}); first: {'; '.join(snap['examples'][:3])}. "
        "The checkpoints so far are kept: fix or restore the files (or re-import the corpus), "
        "or raise the limit, and run the same command again to resume"
    )


def check(snap: dict, max_share: float, unit: str = "rows") -> None:
    """Raise :class:`UnreadableInputError` if more than ``max_share`` of the row reads so
    far were skipped for unreadable audio. The message names examples."""
    if snap["rows"] and share(snap) > max_share:
        raise UnreadableInputError(
            message(snap, unit, f"train.max_unreadable_share is {max_share:g}")
        )


class Tally:
    """A worker's view of the ledger. Rank 0 (``active``) checks the limit every
    ``every`` steps and wherever :meth:`flush` is called (one small actor call each);
    other ranks only name the cause of an empty epoch."""

    def __init__(
        self,
        ledger=None,
        max_share: float = 1.0,
        unit: str = "rows",
        active: bool = True,
        every: int = 100,
    ):
        self.ledger, self.max_share, self.unit = ledger, max_share, unit
        self.active, self.every = active and ledger is not None, every
        self.steps = 0

    def resume(self, prior: dict | None) -> None:
        """Give the ledger an earlier invocation's counts (from the restored checkpoint)."""
        if self.active and prior:
            self.ledger.set_prior.remote(prior)

    def step(self) -> None:
        """Count a step; every ``every`` steps, check the limit."""
        if not self.active:
            return
        self.steps += 1
        if self.steps % self.every == 0:
            self.flush()

    def flush(self, check_now: bool = True) -> dict:
        """The ledger's snapshot (zeros where not active or the ledger is gone), checked
        against the limit unless ``check_now`` is False (see :meth:`check`)."""
        snap = snapshot(self.ledger) if self.active else None
        if snap is None:
            self.active = False
            return zero_counts()
        if check_now:
            self.check(snap)
        return snap

    def check(self, snap: dict) -> None:
        """:func:`check` ``snap`` against this run's limit (an epoch's end checks after
        its checkpoint is saved, so the epoch is not lost)."""
        if self.active:
            check(snap, self.max_share, self.unit)

    def guard(self, batches):
        """Yield from ``batches``; if the stream fails while the skipped share is over the
        limit (a task stopped it: Ray Data passes on only the task's traceback text), raise
        :class:`UnreadableInputError` instead, on every rank."""
        try:
            yield from batches
        except RaysvError:
            raise
        except Exception as exc:
            snap = snapshot(self.ledger) if self.ledger is not None else None
            if snap and snap["rows"] and share(snap) > self.max_share:
                raise UnreadableInputError(
                    message(
                        snap,
                        self.unit,
                        f"train.max_unreadable_share is {self.max_share:g}; the data stream stopped",
                    )
                ) from exc
            raise

    def no_batch_error(self) -> RaysvError | RuntimeError:
        """The error for an epoch in which this worker got no complete batch: unreadable
        audio if the ledger counted any, else a batch larger than the worker's shard."""
        snap = snapshot(self.ledger) or zero_counts()
        if snap["rows"]:
            return UnreadableInputError(
                "no complete batch this epoch: " + message(snap, self.unit, "the stream ran dry")
            )
        return RuntimeError(
            "this worker received no complete batch: batch_size is larger than its data shard"
        )


def snapshot(ledger) -> dict | None:
    """:func:`raysv.training.stream.snapshot` (the ledger's counts; a Ray call)."""
    from raysv.training import stream

    return stream.snapshot(ledger)


def __getattr__(name: str):
    # the ledger's other Ray calls, where they live (see the module docstring)
    if name in ("record", "start_ledger"):
        from raysv.training import stream

        return getattr(stream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
