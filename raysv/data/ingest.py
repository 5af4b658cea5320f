"""Importers: folders, Kaldi directories, dialogue JSON lines and trial lists -> Parquet.

Each importer yields candidate rows (paths and metadata, no audio), then
:func:`probe_rows` reads every file's header in a thread pool (durations and
sample rates without decoding), checks duplicates and builds the utterances
table. Bad rows go to a :class:`~raysv.data.problems.Problems` collector:
strict mode stops at the first one, lenient mode skips and reports them.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from raysv.audio import io as audio_io
from raysv.data import fs
from raysv.data.problems import Problems
from raysv.data.schema import DIALOGUES, UTTERANCES, conform
from raysv.errors import AudioError, ManifestError
from raysv.progress import Progress

log = logging.getLogger("raysv")


@dataclass
class Candidate:
    """One utterance before its header is read."""

    utt_id: str
    path: str
    speaker: str | None = None
    session_id: str | None = None
    dialogue_id: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    where: str | None = None  # the text line that named it (``file:line``), if any


def _relparts(root: str, path: str) -> list[str]:
    if fs.is_local(root):
        rel = os.path.relpath(fs.resolve(path)[1], fs.resolve(root)[1])
        return rel.split(os.sep)
    return path[len(root.rstrip("/")) + 1 :].split("/")


def _strip_ext(name: str) -> str:
    return posixpath.splitext(name)[0]


def audio_files(root: str, problems: Problems) -> Iterator[str]:
    """Audio files under ``root`` at any depth, in sorted order.

    Files in a format libsndfile decodes are yielded; files in a common format
    it cannot decode (``.m4a`` and the like) are reported as
    ``unsupported_format`` with the conversion command, not yielded.
    """
    for path in fs.walk_files(root, audio_io.AUDIO_SUFFIXES + audio_io.UNDECODABLE_SUFFIXES):
        if path.lower().endswith(audio_io.UNDECODABLE_SUFFIXES):
            problems.add("unsupported_format", path, audio_io.conversion_hint(path))
        else:
            yield path


def scan_voxceleb(root: str, problems: Problems) -> Iterator[Candidate]:
    """``ROOT/<speaker>/<session>/<file>.wav``: speaker and session from the folders.

    utt_id is ``speaker/session/file`` without extension (the VoxCeleb trial
    convention minus ``.wav``); session_id is ``speaker/session``.
    """
    for path in audio_files(root, problems):
        parts = _relparts(root, path)
        if len(parts) != 3:
            problems.add("bad_layout", path, "expected ROOT/<speaker>/<session>/<file>.wav")
            continue
        spk, ses, name = parts
        yield Candidate(
            utt_id=f"{spk}/{ses}/{_strip_ext(name)}",
            path=path,
            speaker=spk,
            session_id=f"{spk}/{ses}",
        )


def scan_librispeech(root: str, problems: Problems) -> Iterator[Candidate]:
    """``ROOT/<speaker>/<chapter>/*.flac``: session_id is ``speaker/chapter``; utt_id the file stem."""
    for path in audio_files(root, problems):
        parts = _relparts(root, path)
        if len(parts) != 3:
            problems.add("bad_layout", path, "expected ROOT/<speaker>/<chapter>/<file>.flac")
            continue
        spk, chap, name = parts
        yield Candidate(utt_id=_strip_ext(name), path=path, speaker=spk, session_id=f"{spk}/{chap}")


def _read_kv(path: str, problems: Problems, min_fields: int) -> Iterator[tuple[int, list[str]]]:
    for lineno, line in enumerate(fs.read_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < min_fields:
            problems.add(
                "bad_line",
                f"{path}:{lineno}",
                f"expected at least {min_fields} fields, got {line!r}",
            )
            continue
        yield lineno, fields


def kaldi_base(data_dir: str, relative: list[str], wav_root: str | None = None) -> str:
    """The folder the relative paths of a ``wav.scp`` are relative to (absolute).

    ``wav_root`` when given; else the data dir if the first relative path
    exists under it, else the current folder if it exists there (Kaldi
    recipes write paths relative to the recipe's root, where its scripts
    run), else the data dir (the missing files are then reported).
    """
    if wav_root is not None:
        return fs.resolve(wav_root)[1] if fs.is_local(wav_root) else wav_root
    base = fs.resolve(data_dir)[1] if fs.is_local(data_dir) else data_dir
    if relative and fs.is_local(data_dir):
        first = relative[0]
        if not os.path.exists(os.path.join(base, first)) and os.path.exists(first):
            return os.getcwd()
    return base


def scan_kaldi(
    data_dir: str,
    problems: Problems,
    wav_root: str | None = None,
    info: dict | None = None,
) -> Iterator[Candidate]:
    """Kaldi data dir: ``wav.scp`` (plain paths), ``utt2spk``, optional ``segments``.

    Relative paths in wav.scp are resolved against :func:`kaldi_base` and
    stored absolute (the manifest works from any folder); ``info`` (if given)
    receives ``relative_paths_base`` and the count of relative paths. A
    recording id given twice keeps its first line (the second is reported).
    Piped commands (``... |``) are reported as bad lines: decode them to files first.
    """
    scp = fs.join(data_dir, "wav.scp")
    if not fs.exists(scp):
        raise ManifestError(f"{data_dir}: not a Kaldi data directory (no wav.scp)")
    lines: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    for lineno, fields in _read_kv(scp, problems, 2):
        rec, rest = fields[0], " ".join(fields[1:])
        if rest.endswith("|"):
            problems.add(
                "bad_line",
                f"{scp}:{lineno}",
                "piped commands are not supported; give plain audio paths",
            )
            continue
        if rec in seen:
            problems.add(
                "duplicate_utt_id",
                f"{scp}:{lineno}",
                f"recording {rec!r} already given on line {seen[rec]}; this line is ignored",
            )
            continue
        seen[rec] = lineno
        lines.append((lineno, rec, rest))
    relative = [r for _, _, r in lines if not (os.path.isabs(r) or "://" in r)]
    base = kaldi_base(data_dir, relative, wav_root)
    if info is not None:
        info.update(relative_paths=len(relative), relative_paths_base=base if relative else None)
    recs: dict[str, str] = {}
    for _, rec, rest in lines:
        recs[rec] = rest if (os.path.isabs(rest) or "://" in rest) else fs.join(base, rest)
    utt2spk: dict[str, str] = {}
    u2s = fs.join(data_dir, "utt2spk")
    if fs.exists(u2s):
        for _, fields in _read_kv(u2s, problems, 2):
            utt2spk[fields[0]] = fields[1]
    seg_file = fs.join(data_dir, "segments")
    if fs.exists(seg_file):
        for lineno, fields in _read_kv(seg_file, problems, 4):
            seg, rec = fields[0], fields[1]
            where = f"{seg_file}:{lineno}"
            if rec not in recs:
                problems.add("bad_line", where, f"recording {rec!r} is not in wav.scp")
                continue
            try:
                start, end = float(fields[2]), float(fields[3])
            except ValueError:
                problems.add("bad_line", where, f"start/end are not numbers: {fields[2:4]}")
                continue
            if not (0 <= start < end):
                problems.add(
                    "bad_value", where, f"segment needs 0 <= start < end, got {start} {end}"
                )
                continue
            yield Candidate(
                seg, recs[rec], utt2spk.get(seg), session_id=rec, start_s=start, end_s=end
            )
    else:
        for rec, path in recs.items():
            yield Candidate(rec, path, utt2spk.get(rec))


def scan_dialogues(
    jsonl: str, problems: Problems, audio_root: str | None = None
) -> Iterator[Candidate]:
    """Dialogues as JSON lines: ``{"dialogue_id": ..., "utterances": [path | {path, ...}]}``.

    Paths are relative to ``audio_root`` (default: the JSON file's folder).
    Utterance objects may carry ``utt_id``, ``speaker`` and ``session_id``;
    the default utt_id is the relative path without extension.
    """
    root = audio_root or (
        os.path.dirname(fs.resolve(jsonl)[1]) if fs.is_local(jsonl) else jsonl.rsplit("/", 1)[0]
    )
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(fs.read_text(jsonl).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{jsonl}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add("bad_line", where, f"not valid JSON ({exc.msg})")
            continue
        if (
            not isinstance(obj, dict)
            or "dialogue_id" not in obj
            or not isinstance(obj.get("utterances"), list)
        ):
            problems.add("bad_line", where, 'expected {"dialogue_id": ..., "utterances": [...]}')
            continue
        did = obj["dialogue_id"]
        if not isinstance(did, (str, int)) or isinstance(did, bool) or str(did) == "":
            problems.add("bad_value", where, f"dialogue_id must be a string, got {did!r}")
            continue
        did = str(did)
        if did in first_line:  # two lines would silently merge into one dialogue
            problems.add(
                "bad_line",
                where,
                f"dialogue {did!r} already given on line {first_line[did]}; this line is ignored",
            )
            continue
        first_line[did] = lineno
        for item in obj["utterances"]:
            meta = item if isinstance(item, dict) else {"path": item}
            rel = meta.get("path")
            if not isinstance(rel, str) or not rel:
                problems.add("bad_line", where, f"utterance without a path: {item!r}")
                continue
            bad = [
                k
                for k in ("utt_id", "speaker", "session_id")
                if meta.get(k) is not None and not isinstance(meta[k], (str, int))
            ]
            if bad:
                problems.add(
                    "bad_value", where, f"{bad[0]} must be a string, got {meta[bad[0]]!r} ({rel})"
                )
                continue
            meta = {
                k: (str(v) if k in ("utt_id", "speaker", "session_id") and v is not None else v)
                for k, v in meta.items()
            }
            path = rel if (os.path.isabs(rel) or "://" in rel) else fs.join(root, rel)
            yield Candidate(
                utt_id=str(meta.get("utt_id") or _strip_ext(rel)),
                path=path,
                speaker=meta.get("speaker"),
                session_id=meta.get("session_id"),
                dialogue_id=did,
                where=where,
            )


def _probe(c: Candidate) -> tuple[Candidate, audio_io.AudioInfo | AudioError]:
    try:
        return c, audio_io.info(c.path)
    except AudioError as exc:
        return c, exc


def _chunks(it: Iterable[Candidate], n: int) -> Iterator[list[Candidate]]:
    buf: list[Candidate] = []
    for c in it:
        buf.append(c)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _audio_problem_kind(err: AudioError) -> str:
    return err.kind  # set where the problem was found, never guessed from the text


def probe_rows(
    candidates: Iterable[Candidate],
    problems: Problems,
    deep: bool = False,
    threads: int = 8,
    chunk: int = 512,
) -> pa.Table:
    """Read headers of all candidates and build the utterances table.

    Args:
        candidates: rows from a ``scan_*`` function (consumed lazily).
        problems: collector for missing/unreadable/empty files and duplicates.
        deep: also decode every file block by block to catch NaN/inf samples.
        threads: header reads run in a thread pool (I/O bound, network storage).
    Returns:
        utterances table (schema ``UTTERANCES``); empty if nothing was valid.
    """
    cols: dict[str, list] = {f.name: [] for f in UTTERANCES}
    seen: dict[str, str] = {}
    progress = Progress("reading audio headers")
    with ThreadPoolExecutor(threads) as pool:
        for batch in _chunks(candidates, chunk):
            for cand, res in pool.map(_probe_deep if deep else _probe, batch):
                progress.update()
                if cand.utt_id in seen:
                    problems.add(
                        "duplicate_utt_id",
                        cand.path,
                        f"utt_id {cand.utt_id!r} already used by {seen[cand.utt_id]}",
                    )
                    continue
                if isinstance(res, AudioError):
                    problems.add(_audio_problem_kind(res), res.path, res.reason)
                    continue
                duration = res.duration_s
                if cand.start_s is not None:
                    if cand.end_s > res.duration_s + 0.01:
                        problems.add(
                            "bad_value",
                            cand.path,
                            f"segment {cand.utt_id} ends at {cand.end_s}s, after the file's end ({res.duration_s:.2f}s)",
                        )
                        continue
                    duration = cand.end_s - cand.start_s
                seen[cand.utt_id] = cand.path
                for name, value in (
                    ("utt_id", cand.utt_id),
                    ("path", cand.path),
                    ("dialogue_id", cand.dialogue_id),
                    ("session_id", cand.session_id),
                    ("speaker", cand.speaker),
                    ("duration_s", duration),
                    ("sample_rate", res.sample_rate),
                    ("start_s", cand.start_s),
                    ("end_s", cand.end_s),
                ):
                    cols[name].append(value)
    elapsed = progress.close()
    log.info("read %d audio headers in %.1fs", progress.done, elapsed)
    return pa.table(cols, schema=UTTERANCES)


def _probe_deep(c: Candidate) -> tuple[Candidate, audio_io.AudioInfo | AudioError]:
    cand, res = _probe(c)
    if isinstance(res, AudioError):
        return cand, res
    try:
        audio_io.scan_samples(c.path)
    except AudioError as exc:
        return cand, exc
    return cand, res


def build_dialogues(utts: pa.Table, problems: Problems) -> tuple[pa.Table, pa.Table]:
    """Group utterances by ``dialogue_id`` into the dialogues table.

    Dialogues with fewer than 2 utterances are reported and dropped; their
    utterances stay in the utterances table with a null ``dialogue_id`` (they
    are still usable for utterance-level training).
    Returns ``(utterances, dialogues)``.
    """
    groups: dict[str, list[str]] = {}
    for uid, did in zip(
        utts.column("utt_id").to_pylist(), utts.column("dialogue_id").to_pylist(), strict=True
    ):
        if did is not None:
            groups.setdefault(did, []).append(uid)
    short = {d for d, ids in groups.items() if len(ids) < 2}
    for d in sorted(short):
        problems.add(
            "short_dialogue",
            f"dialogue {d}",
            f"has {len(groups[d])} usable utterance(s), needs at least 2",
        )
    if short:
        dids = [None if d in short else d for d in utts.column("dialogue_id").to_pylist()]
        utts = utts.set_column(
            utts.schema.get_field_index("dialogue_id"), "dialogue_id", pa.array(dids, pa.string())
        )
    keep = [d for d in groups if d not in short]
    dialogues = pa.table(
        {
            "dialogue_id": keep,
            "utt_ids": [groups[d] for d in keep],
            "num_utts": [len(groups[d]) for d in keep],
        },
        schema=DIALOGUES,
    )
    return utts, dialogues


def check_utterances(table: pa.Table, source: str, problems: Problems) -> pa.Table:
    """Validate an utterances table read from Parquet; return the rows that pass.

    Checks required columns (error), empty table (error), duplicate ids, null
    paths and non-positive/NaN durations or sample rates (reported per row).
    """
    table = conform(table, "utterances", source)
    if table.num_rows == 0:
        raise ManifestError(f"{source}: the utterances manifest is empty (0 rows)")
    keep = []
    seen: set[str] = set()
    ids = table.column("utt_id").to_pylist()
    paths = table.column("path").to_pylist()
    durs = table.column("duration_s").to_pylist()
    srs = table.column("sample_rate").to_pylist()
    for row, (uid, path, dur, sr) in enumerate(zip(ids, paths, durs, srs, strict=True)):
        where = f"{source} row {row}"
        if uid is None or path is None:
            problems.add("bad_value", where, "utt_id and path must not be null")
        elif uid in seen:
            problems.add("duplicate_utt_id", where, f"utt_id {uid!r} appears more than once")
        elif dur is None or not dur > 0:  # catches NaN too
            problems.add("bad_value", where, f"duration_s must be > 0, got {dur} ({path})")
        elif sr is None or sr <= 0:
            problems.add("bad_value", where, f"sample_rate must be > 0, got {sr} ({path})")
        else:
            seen.add(uid)
            keep.append(row)
    if not keep:
        raise ManifestError(f"{source}: no valid rows ({table.num_rows} rows, all invalid)")
    return table.take(keep) if len(keep) < table.num_rows else table


def check_audio(table: pa.Table, problems: Problems, deep: bool = False) -> pa.Table:
    """Check that every row's file exists and is readable (and finite if ``deep``)."""
    cands = [
        Candidate(u, p, s, ses, d, st, en)
        for u, p, s, ses, d, st, en in zip(
            *(
                table.column(c).to_pylist()
                for c in (
                    "utt_id",
                    "path",
                    "speaker",
                    "session_id",
                    "dialogue_id",
                    "start_s",
                    "end_s",
                )
            ),
            strict=True,
        )
    ]
    probed = probe_rows(cands, problems, deep=deep)
    return probed
