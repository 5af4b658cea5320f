"""Corpus folders (``--data DIR``) -> manifests.

A corpus folder holds any of these (at least one source of audio)::

    DIR/wav/<speaker>/<session>/<utt>.wav   labelled audio (VoxCeleb-style)
    DIR/unlabeled/**/<any name>.<ext>       unlabeled audio, any depth, no speaker
    DIR/unlabeled.txt                       optional list of more audio paths, one per line
    DIR/dialogues.jsonl                     {"dialogue_id": ..., "utterances": [paths]}
    DIR/trials/dev.txt, DIR/trials/test.txt VoxCeleb-format trials (paths relative to DIR/wav)

Paths in ``dialogues.jsonl`` and ``unlabeled.txt`` are relative to DIR and may
name audio in any folder (``DIR/train/x7f3.wav``); audio they name outside
``wav/`` and ``unlabeled/`` is imported too, without a speaker (a session or
speaker only where the dialogue line gives one). A path that leaves DIR
(``../``, absolute, ``file://``, ``s3://``) is refused with its line unless
``allow_outside`` (``--allow-outside-paths``); symlinks inside DIR are followed.

Training audio is every imported utterance that the trial lists do not hold
out (:mod:`raysv.data.holdout`): the trial utterances and all audio of the
``wav/`` speakers they draw from. :func:`prepare_corpus` writes the
utterances (all rows, for evaluation), the training rows, dialogues built
from training rows only, and the resolved trials, and reuses them only while
the folder's contents are unchanged (a fingerprint of paths, sizes and
modification times).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from raysv.data import fs, ingest
from raysv.data.holdout import held_out_mask
from raysv.data.outputs import read_json, write_json_atomic
from raysv.data.problems import Problems
from raysv.data.trials import parse_trials, resolve_trials
from raysv.errors import ManifestError, OutputError, one_line
from raysv.progress import Progress

log = logging.getLogger("raysv")

LAYOUT = (
    "expected audio in DIR/wav/<speaker>/<session>/, DIR/unlabeled/ (any depth), "
    "DIR/unlabeled.txt or DIR/dialogues.jsonl"
)
# Bump when the manifests' meaning changes, so that an older import is redone.
IMPORT_FORMAT = 2


@dataclass
class Manifests:
    """Paths of the Parquet manifests of one corpus."""

    utterances: str  # every usable utterance (training and evaluation)
    train: str  # the utterances training may read: none a trial list holds out
    dialogues: str | None  # dialogues of training utterances only
    trials: dict[str, str]  # split name -> trials parquet

    def to_dict(self) -> dict:
        return {
            "utterances": self.utterances,
            "train": self.train,
            "dialogues": self.dialogues,
            "trials": dict(self.trials),
        }


def fingerprint(data_dir: str, skip: tuple[str, ...] = ()) -> str:
    """sha256 over (relative path, size, mtime) of every file under ``data_dir``.

    Leaves out ``meta/`` and the folders in ``skip`` (e.g. a run folder inside
    DIR). Cheap (one ``stat`` per file, no reads); a changed, added, removed or
    touched file changes it. Symlinked folders are followed once (loops are cut).
    """
    h = hashlib.sha256(f"format {IMPORT_FORMAT}\n".encode())
    base = os.path.abspath(data_dir)
    real_base = os.path.realpath(base)
    skipped = {os.path.realpath(os.path.join(base, "meta"))} | {
        r  # a skip folder that holds DIR itself would hide everything: ignored
        for r in (os.path.realpath(p) for p in skip)
        if os.path.commonpath([r, real_base]) != r
    }
    seen: set[str] = set()

    def walk(folder: str) -> None:
        real = os.path.realpath(folder)
        if real in seen or real in skipped:
            return
        seen.add(real)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.is_dir(follow_symlinks=True):
                walk(e.path)
            elif e.is_file(follow_symlinks=True):
                st = e.stat(follow_symlinks=True)
                rel = os.path.relpath(e.path, base)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())

    walk(base)
    return h.hexdigest()


def _key(path: str) -> str:
    """Identity of an audio file across how it is written (symlinks, ``..``, ``file://``)."""
    return os.path.realpath(fs.resolve(path)[1]) if fs.is_local(path) else path


def _outside(path: str, data_dir: str) -> bool:
    """Whether ``path`` (as a corpus file names it, joined to DIR) lies outside ``data_dir``.

    URIs (``file://``, ``s3://``) always do; local paths are normalised as
    text (``..`` resolved, symlinks not), so a symlink inside DIR is inside.
    """
    if "://" in path:
        return True
    base = os.path.normpath(os.path.abspath(data_dir))
    norm = os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([norm, base]) != base


def _relative_id(path: str, data_dir: str) -> str:
    """utt_id of audio outside ``wav/``: its path relative to DIR without the extension."""
    rel = os.path.relpath(path, os.path.abspath(data_dir)).replace(os.sep, "/")
    return os.path.splitext(rel)[0]


def _list_file(path: str, data_dir: str, problems: Problems) -> list[ingest.Candidate]:
    """``DIR/unlabeled.txt``: one audio path per line (relative to DIR), ``#`` comments."""
    out = []
    for lineno, line in enumerate(fs.read_text(path).splitlines(), 1):
        rel = line.strip()
        if not rel or rel.startswith("#"):
            continue
        full = rel if ("://" in rel or os.path.isabs(rel)) else os.path.join(data_dir, rel)
        uid = os.path.splitext(rel)[0] if _outside(full, data_dir) else _relative_id(full, data_dir)
        out.append(ingest.Candidate(utt_id=uid, path=full, where=f"{path}:{lineno}"))
    return out


def _candidates(
    data_dir: str, problems: Problems, allow_outside: bool
) -> tuple[list[ingest.Candidate], dict]:
    """Every utterance of the folder before its header is read, with where it came from."""
    wav = os.path.join(data_dir, "wav")
    unlabeled = os.path.join(data_dir, "unlabeled")
    cands: list[ingest.Candidate] = []
    sources: dict[str, int] = {}
    if os.path.isdir(wav):
        cands += list(ingest.scan_voxceleb(wav, problems))
        sources["wav"] = len(cands)
    if os.path.isdir(unlabeled):
        found = [
            ingest.Candidate(utt_id=_relative_id(p, data_dir), path=p)
            for p in ingest.audio_files(unlabeled, problems)
        ]
        cands += found
        sources["unlabeled"] = len(found)
    by_path = {_key(c.path): c for c in cands}
    named: list[ingest.Candidate] = []
    lst = os.path.join(data_dir, "unlabeled.txt")
    if os.path.isfile(lst):
        named += _list_file(lst, data_dir, problems)
    jsonl = os.path.join(data_dir, "dialogues.jsonl")
    if os.path.isfile(jsonl):
        named += list(ingest.scan_dialogues(jsonl, problems, audio_root=data_dir))
    extra = 0
    for cand in named:
        if not allow_outside and _outside(cand.path, data_dir):
            problems.add(
                "outside_corpus",
                cand.where or cand.path,
                f"{cand.path} is outside the corpus folder {data_dir} "
                "(pass --allow-outside-paths to import it)",
            )
            continue
        key = _key(cand.path)
        known = by_path.get(key)
        if known is None:
            if fs.is_local(cand.path) and cand.path.lower().endswith(
                ingest.audio_io.UNDECODABLE_SUFFIXES
            ):
                problems.add(
                    "unsupported_format", cand.where, ingest.audio_io.conversion_hint(cand.path)
                )
                continue
            by_path[key] = cand
            cands.append(cand)
            extra += 1
        elif cand.dialogue_id is not None:
            if known.dialogue_id is not None and known.dialogue_id != cand.dialogue_id:
                problems.add(
                    "bad_line",
                    cand.where or cand.path,
                    f"{cand.path} is in two dialogues: {known.dialogue_id} and {cand.dialogue_id}",
                )
                continue
            known.dialogue_id = cand.dialogue_id
    if extra:
        sources["named_by_lists"] = extra
    return cands, sources


def _read_summary(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # missing or cut short by a kill: import again


def _write_json(obj: dict, path: str) -> None:
    write_json_atomic(path, obj)


def prepare_corpus(
    data_dir: str,
    out_dir: str,
    strict: bool = False,
    force: bool = False,
    allow_outside: bool = False,
) -> tuple[Manifests, dict]:
    """Import corpus folder ``data_dir`` into manifests under ``out_dir``.

    Returns ``(manifests, summary)``. The manifests are reused while the
    folder's fingerprint is unchanged (unless ``force``); otherwise the folder
    is imported again, and the summary's ``reused`` says which happened. The
    summary counts utterances by source, training and held-out utterances,
    dialogues, trials and skipped rows (listed in ``skipped.jsonl``).
    """
    if not os.path.isdir(data_dir):
        raise ManifestError(f"{data_dir}: no such folder")
    jsonl = os.path.join(data_dir, "dialogues.jsonl")
    if not any(
        os.path.exists(os.path.join(data_dir, x))
        for x in ("wav", "unlabeled", "unlabeled.txt", "dialogues.jsonl")
    ):
        raise ManifestError(f"{data_dir}: not a corpus folder ({LAYOUT})")
    os.makedirs(out_dir, exist_ok=True)
    summary_path = os.path.join(out_dir, "summary.json")
    man = Manifests(
        utterances=os.path.join(out_dir, "utterances.parquet"),
        train=os.path.join(out_dir, "train.parquet"),
        dialogues=os.path.join(out_dir, "dialogues.parquet") if os.path.isfile(jsonl) else None,
        trials={
            s: os.path.join(out_dir, f"trials_{s}.parquet")
            for s in ("dev", "test")
            if os.path.isfile(os.path.join(data_dir, "trials", f"{s}.txt"))
        },
    )
    # The run folder (out_dir's parent: <run>/manifests) may sit inside DIR: what the
    # run writes there is not the corpus.
    fp = fingerprint(data_dir, skip=(out_dir, os.path.dirname(os.path.abspath(out_dir))))
    old = _read_summary(summary_path)
    if not force and old is not None:
        if old.get("fingerprint") == fp and old.get("allow_outside", False) == allow_outside:
            log.info(
                "reusing manifests in %s (corpus %s unchanged since import)", out_dir, data_dir
            )
            return man, {**old, "reused": True}
        log.info("corpus %s changed since the last import: importing again", data_dir)
    progress = Progress("listing corpus audio")
    problems = Problems(strict=strict)
    cands, sources = _candidates(data_dir, problems, allow_outside)
    progress.update(len(cands))
    utts = ingest.probe_rows(cands, problems)
    if utts.num_rows == 0:
        problems.log_summary()
        raise ManifestError(f"{data_dir}: no usable audio files found ({LAYOUT})")
    summary: dict = {
        "data": data_dir,
        "fingerprint": fp,
        "allow_outside": allow_outside,
        "utterances": utts.num_rows,
        "sources": sources,
    }
    trials = {}
    for split in man.trials:
        src = os.path.join(data_dir, "trials", f"{split}.txt")
        trials[split] = resolve_trials(parse_trials(src, problems), utts, src, problems)
        summary[f"trials_{split}"] = trials[split].num_rows
    named = set()
    for t in trials.values():
        named |= set(t.column("enroll").to_pylist()) | set(t.column("test").to_pylist())
    # Trial utterances and every utterance of the wav/ speakers they draw from.
    mask = held_out_mask(utts, named, by_speaker=True)
    train, held = utts.filter(pc.invert(mask)), utts.filter(mask)
    if train.num_rows == 0:
        problems.log_summary()  # e.g. every listed path refused: say why first
        raise ManifestError(
            f"{data_dir}: every utterance belongs to a trial speaker; nothing left to train on "
            f"(put training audio under unlabeled/ or name it in dialogues.jsonl)"
        )
    held = held.set_column(
        held.schema.get_field_index("dialogue_id"),
        "dialogue_id",
        pa.nulls(held.num_rows, pa.string()),
    )
    if man.dialogues:
        train, dialogues = ingest.build_dialogues(train, problems)
        fs.write_table(dialogues, man.dialogues)
        summary["dialogues"] = dialogues.num_rows
    summary["train_utterances"] = train.num_rows
    summary["held_out_utterances"] = held.num_rows
    summary["speakers_known"] = int(pc.count(utts["speaker"]).as_py())
    fs.write_table(pa.concat_tables([train, held]), man.utterances)
    fs.write_table(train, man.train)
    for split, path in man.trials.items():
        fs.write_table(trials[split], path)
    summary["skipped"] = problems.counts()
    problems.log_summary()
    skipped = os.path.join(out_dir, "skipped.jsonl")
    if problems.items:
        problems.write_jsonl(skipped)
    elif os.path.isfile(skipped):
        os.remove(skipped)  # ours, from an earlier import of this folder
    log.info(
        "imported %s: %d utterances; training on %d, %d held out for evaluation",
        data_dir,
        utts.num_rows,
        train.num_rows,
        held.num_rows,
    )
    _write_json(summary, summary_path)
    return man, {**summary, "reused": False}


IMPORT_RECORD = "_raysv_import.json"  # in a run folder: the import each command's results are of


def refuse_stale(summary: dict, run_dir: str, outputs: tuple[str, ...], command: str) -> None:
    """Refuse to go on in ``run_dir`` when ``command``'s results there were made from
    another import of the corpus than the current one.

    ``summary`` is :func:`prepare_corpus`'s; ``outputs`` are the run folder's result
    paths (relative) that ``command``'s later steps would reuse. Results made from an
    earlier import must not be mixed with the new one (a stale embedding pool, for
    one, could still hold audio the new import holds out). :data:`IMPORT_RECORD`
    keeps, per command, the import (fingerprint) its results are of; it changes only
    when the check passes (no result there, or the same import), so a refusal sticks
    across starts — also when a start is stopped or fails during the check — until
    the results named are removed. A run folder from before the record (none there)
    whose import is unchanged is taken as it is.

    In a run folder on object storage (``run_dir`` its working copy) the results are
    looked for in the bucket too (checkpoints, ``ray/``, are only there) and the
    message names the bucket's paths: removing them there removes them from the
    working copy at the next start. Hidden names (a killed step's temporary files)
    and empty folders do not count as results.
    """
    from raysv.data.run_store import holds_objects, location

    def made(name: str) -> bool:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path) and not name.startswith("."):
            return True
        for _, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            if any(not f.startswith(".") for f in files):
                return True
        where = location(path)
        try:
            return where != path and holds_objects(where)
        except OSError as exc:
            raise OutputError(f"{where}: cannot read the run folder: {one_line(exc)}") from None

    record_path = os.path.join(run_dir, IMPORT_RECORD)
    record = read_json(record_path)
    record = record if isinstance(record, dict) else {}
    current = {
        "fingerprint": summary.get("fingerprint"),
        "allow_outside": summary.get("allow_outside", False),
    }
    if record.get(command) == current or (command not in record and summary.get("reused", True)):
        if record.get(command) != current:
            write_json_atomic(record_path, {**record, command: current})
        return
    found = [o for o in outputs if made(o)]
    if not found:
        write_json_atomic(record_path, {**record, command: current})
        return
    raise ManifestError(
        f"{summary['data']}: the corpus changed since {location(run_dir)} was started, and "
        f"{location(os.path.join(run_dir, found[0]))} was made from the old import; use a "
        f"new --out (or remove {', '.join(found)} there to redo those steps)"
    )
