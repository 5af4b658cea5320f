"""Training rows whose audio turned unreadable during a run: counted, and a limit.

A file that goes bad after the import (a truncated copy, a vanished mount)
costs its row, not the run: the featurisation tasks skip it
(:func:`raysv.audio.io.each_readable`). But a run that silently trains on a
fraction of its data, or on nothing because the storage went away, wastes the
compute too. So the tasks report every skipped row to one small actor per run
(the ``_Ledger``) with the rows they read, and rank 0's :func:`check`
stops the run with a :class:`UnreadableInputError` naming files
once the skipped share passes ``train.max_unreadable_share``.

Driver: :func:`start_ledger` before the trainer, :func:`snapshot` after it.
Featurisation tasks: :func:`record`. Workers: :class:`Tally`.
"""

from __future__ import annotations

import logging
import time

from raysv.errors import RaysvError

log = logging.getLogger("raysv")

EXAMPLES = 5  # unreadable rows named in messages and summaries
REPORT_SECONDS = 2.0  # a process sends its count of rows read at most this often


class UnreadableInputError(RaysvError):
    """Too many training rows had unreadable audio (the run stops; its checkpoints stay)."""


class _Ledger:
    """Rows read and rows skipped as unreadable, for one run (a Ray actor)."""

    def __init__(self):
        self.rows, self.read, self.examples = 0, 0, []

    def add(self, read: int, skipped: int, examples: list[str]) -> None:
        self.read += read
        self.rows += skipped
        self.examples.extend(examples[: EXAMPLES - len(self.examples)])

    def snapshot(self) -> dict:
        return {"rows": self.rows, "read": self.read, "examples": list(self.examples)}


def start_ledger():
    """A new :class:`_Ledger` actor (no CPU reserved), owned by the calling driver."""
    import ray

    return ray.remote(num_cpus=0)(_Ledger).remote()


_PENDING: dict = {}  # ledger -> [rows read but not yet sent, time of the last send]


def record(ledger, n_rows: int, bad: list) -> None:
    """Count a featurised batch of ``n_rows`` rows, of which ``bad`` (``[(row, AudioError)]``)
    were skipped, towards ``ledger`` (None: don't).

    Fire-and-forget, and batched per process: a batch with a skipped row is sent at
    once; otherwise rows read are sent at most every :data:`REPORT_SECONDS`, so the
    ledger's count of rows read trails by at most that much of each process's work.
    """
    if ledger is None:
        return
    pending = _PENDING.setdefault(ledger, [0, -float("inf")])
    pending[0] += n_rows
    now = time.monotonic()
    if bad or now - pending[1] >= REPORT_SECONDS:
        ledger.add.remote(pending[0], len(bad), [str(exc) for _, exc in bad[:EXAMPLES]])
        pending[0], pending[1] = 0, now


def snapshot(ledger) -> dict:
    """``{"rows": skipped, "read", "examples"}`` so far (zeros for ``ledger`` None)."""
    if ledger is None:
        return {"rows": 0, "read": 0, "examples": []}
    import ray

    return ray.get(ledger.snapshot.remote())


def share(snap: dict) -> float:
    """Rows skipped over rows read (0 before any row is read)."""
    return snap["rows"] / max(snap["read"], snap["rows"], 1)


def check(snap: dict, max_share: float, unit: str = "rows") -> None:
    """Raise :class:`UnreadableInputError` if more than ``max_share`` of the rows read
    so far were skipped for unreadable audio. The message names examples."""
    if snap["rows"] and share(snap) > max_share:
        raise UnreadableInputError(
            f"{snap['rows']} training {unit} had unreadable audio "
            f"({share(snap):.1%} of those read; train.max_unreadable_share is {max_share:g}); "
            f"first: {'; '.join(snap['examples'][:3])}. The checkpoints so far are kept: fix or "
            "restore the files (or re-import the corpus) and run the same command again to resume"
        )


class Tally:
    """A worker's view of the ledger. Rank 0 (``active``) checks the limit every
    ``every`` steps and at each epoch's end (one small actor call each time); other
    ranks only name the cause of an empty epoch."""

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

    def step(self) -> None:
        """Count a step; every ``every`` steps, check the limit."""
        if not self.active:
            return
        self.steps += 1
        if self.steps % self.every == 0:
            self.flush()

    def flush(self, check_now: bool = True) -> dict:
        """The ledger's snapshot (zeros where not active), checked against the limit
        unless ``check_now`` is False (see :meth:`check`)."""
        if not self.active:
            return snapshot(None)
        snap = snapshot(self.ledger)
        if check_now:
            self.check(snap)
        return snap

    def check(self, snap: dict) -> None:
        """:func:`check` ``snap`` against this run's limit (an epoch's end checks after
        its checkpoint is saved, so the epoch is not lost)."""
        if self.active:
            check(snap, self.max_share, self.unit)

    def no_batch_error(self) -> RaysvError | RuntimeError:
        """The error for an epoch in which this worker got no complete batch: unreadable
        audio if the ledger counted any, else a batch larger than the worker's shard."""
        snap = snapshot(self.ledger)
        if snap["rows"]:
            return UnreadableInputError(
                f"no complete batch this epoch: {snap['rows']} training {self.unit} had "
                f"unreadable audio; first: {'; '.join(snap['examples'][:3])}. The checkpoints "
                "so far are kept: fix or restore the files and run the same command again to resume"
            )
        return RuntimeError(
            "this worker received no complete batch: batch_size is larger than its data shard"
        )
