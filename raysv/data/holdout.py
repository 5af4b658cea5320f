"""Evaluation audio is never trained on: what the trial lists hold out.

Every training entry point (Stage I in either mode, Stage II, iterate, and so
the demo and tune) passes its utterances through :func:`training_rows` before
building a training table. Which utterances are held out is evaluation
metadata read from the trial lists: every utterance a dev/test trial names,
and, in a corpus folder, every utterance of the ``wav/`` speaker folders those
trials draw from (a speaker's other recordings would leak it into training).
Speakers are read here only to find the trial speakers' folders; training
code never sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from raysv.data import fs
from raysv.errors import ManifestError

log = logging.getLogger("raysv")


def trial_utt_ids(trial_uris: Iterable[str | None]) -> set[str]:
    """utt_ids named (as enrolment or test) by the resolved trial tables ``trial_uris``."""
    named: set[str] = set()
    for uri in trial_uris:
        if uri:
            t = fs.read_table(uri, ["enroll", "test"])
            named |= set(t.column("enroll").to_pylist()) | set(t.column("test").to_pylist())
    return named


def held_out_mask(utts: pa.Table, named: set[str], by_speaker: bool) -> pa.Array:
    """Boolean mask over ``utts`` rows (shape ``(N,)``): True where the row is held out.

    A row is held out when a trial names its utt_id or, with ``by_speaker``,
    when it has the speaker of a row a trial names (rows without a speaker are
    never held out that way).
    """
    in_trials = pc.is_in(utts["utt_id"], pa.array(sorted(named), pa.string()))
    if not by_speaker or "speaker" not in utts.column_names:
        return pc.fill_null(in_trials, False)
    speakers = {s for s in utts.filter(in_trials).column("speaker").to_pylist() if s is not None}
    same_speaker = pc.is_in(utts["speaker"], pa.array(sorted(speakers), pa.string()))
    return pc.fill_null(pc.or_(in_trials, same_speaker), False)


def training_rows(
    utts: pa.Table,
    trial_uris: Iterable[str | None],
    source: str,
    by_speaker: bool = False,
    what: str | None = "training",
) -> tuple[pa.Table, pa.Table]:
    """Split ``utts`` into ``(train, held_out)`` by the trial lists ``trial_uris``.

    Logs "<what> on N utterances; M held out for evaluation" (unless ``what``
    is None: the caller logs what it trains on) and raises ManifestError
    (naming ``source``) when nothing is left to train on.
    """
    mask = held_out_mask(utts, trial_utt_ids(trial_uris), by_speaker)
    train, held = utts.filter(pc.invert(mask)), utts.filter(mask)
    if train.num_rows == 0:
        raise ManifestError(
            f"{source}: every utterance is held out for evaluation (named by a trial list"
            + (" or of a trial speaker" if by_speaker else "")
            + "); nothing left to train on"
        )
    if what:
        log.info(
            "%s on %d utterances; %d held out for evaluation", what, train.num_rows, held.num_rows
        )
    return train, held
