"""Corpus folders (``--data DIR``) -> manifests.

A corpus folder holds ``wav/<speaker>/<session>/*.wav``, optionally
``dialogues.jsonl`` (paths relative to DIR) and ``trials/{dev,test}.txt``
(paths relative to DIR/wav). :func:`prepare_corpus` imports it into
Parquet manifests under an output folder and reuses them on the next call.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import pyarrow as pa

from raysv.data import fs, ingest
from raysv.data.problems import Problems
from raysv.data.trials import parse_trials, resolve_trials
from raysv.errors import ManifestError

log = logging.getLogger("raysv")


@dataclass
class Manifests:
    """Paths of the Parquet manifests of one corpus."""

    utterances: str
    dialogues: str | None
    trials: dict[str, str]  # split name -> trials parquet

    def to_dict(self) -> dict:
        return {
            "utterances": self.utterances,
            "dialogues": self.dialogues,
            "trials": dict(self.trials),
        }


def _assign_dialogues(utts: pa.Table, data_dir: str, problems: Problems) -> pa.Table:
    """Set ``dialogue_id`` on utterances listed in ``DIR/dialogues.jsonl``."""
    jsonl = os.path.join(data_dir, "dialogues.jsonl")
    by_path = {os.path.abspath(p): i for i, p in enumerate(utts.column("path").to_pylist())}
    dids: list[str | None] = [None] * utts.num_rows
    for cand in ingest.scan_dialogues(jsonl, problems, audio_root=data_dir):
        row = by_path.get(os.path.abspath(cand.path))
        if row is None:
            problems.add(
                "missing_file",
                cand.path,
                f"listed in dialogue {cand.dialogue_id} but not a usable file under wav/",
            )
            continue
        if dids[row] is not None and dids[row] != cand.dialogue_id:
            problems.add(
                "bad_line", cand.path, f"in two dialogues: {dids[row]} and {cand.dialogue_id}"
            )
            continue
        dids[row] = cand.dialogue_id
    return utts.set_column(
        utts.schema.get_field_index("dialogue_id"), "dialogue_id", pa.array(dids, pa.string())
    )


def prepare_corpus(
    data_dir: str, out_dir: str, strict: bool = False, force: bool = False
) -> tuple[Manifests, dict]:
    """Import corpus folder ``data_dir`` into manifests under ``out_dir``.

    Returns ``(manifests, summary)``. Reuses existing manifests unless
    ``force``; a summary of counts and skipped rows is written beside them.
    """
    wav = os.path.join(data_dir, "wav")
    if not os.path.isdir(wav):
        raise ManifestError(
            f"{data_dir}: not a corpus folder (expected audio under {wav}/<speaker>/<session>/)"
        )
    os.makedirs(out_dir, exist_ok=True)
    summary_path = os.path.join(out_dir, "summary.json")
    man = Manifests(
        utterances=os.path.join(out_dir, "utterances.parquet"),
        dialogues=os.path.join(out_dir, "dialogues.parquet")
        if os.path.isfile(os.path.join(data_dir, "dialogues.jsonl"))
        else None,
        trials={
            s: os.path.join(out_dir, f"trials_{s}.parquet")
            for s in ("dev", "test")
            if os.path.isfile(os.path.join(data_dir, "trials", f"{s}.txt"))
        },
    )
    if not force and os.path.isfile(summary_path):
        log.info("reusing manifests in %s (pass force to re-import)", out_dir)
        with open(summary_path) as f:
            return man, json.load(f)
    problems = Problems(strict=strict)
    utts = ingest.probe_rows(ingest.scan_voxceleb(wav, problems), problems)
    if utts.num_rows == 0:
        raise ManifestError(f"{wav}: no usable audio files found")
    summary: dict = {"data": data_dir, "utterances": utts.num_rows}
    if man.dialogues:
        utts = _assign_dialogues(utts, data_dir, problems)
        utts, dialogues = ingest.build_dialogues(utts, problems)
        fs.write_table(dialogues, man.dialogues)
        summary["dialogues"] = dialogues.num_rows
    fs.write_table(utts, man.utterances)
    for split, path in man.trials.items():
        src = os.path.join(data_dir, "trials", f"{split}.txt")
        trials = resolve_trials(parse_trials(src, problems), utts, src, problems)
        fs.write_table(trials, path)
        summary[f"trials_{split}"] = trials.num_rows
    summary["skipped"] = problems.counts()
    problems.log_summary()
    if problems.items:
        problems.write_jsonl(os.path.join(out_dir, "skipped.jsonl"))
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
    return man, summary
