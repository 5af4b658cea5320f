"""``raysv ingest`` and ``raysv validate`` as library calls: import a source into
Parquet, check manifests against each other. Each returns the command's summary dict.

The heavy imports are inside the functions, so that importing this module (as the
CLI does to build its parser) stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from raysv.errors import RaysvError

INGEST_FORMATS = ("voxceleb", "librispeech", "kaldi", "dialogues", "trials")


def run_ingest(
    format: str,
    source: str,
    out: str,
    *,
    dialogues_out: str | None = None,
    audio_root: str | None = None,
    wav_root: str | None = None,
    manifest: str | None = None,
    strict: bool = False,
    deep: bool = False,
) -> dict:
    """Import ``source`` (laid out as ``format``, one of :data:`INGEST_FORMATS`) into
    the Parquet file ``out``: utterances, or trials for ``"trials"``.

    ``dialogues_out`` and ``audio_root`` are for ``"dialogues"``, ``wav_root`` for
    ``"kaldi"``, ``manifest`` (utterances to resolve trial entries against) for
    ``"trials"``. Bad rows are skipped and reported (listed beside a local ``out``)
    unless ``strict``; ``deep`` decodes every file to catch NaN/inf samples.
    """
    from raysv.data import fs, ingest
    from raysv.data.problems import Problems
    from raysv.data.trials import parse_trials, resolve_trials

    if format not in INGEST_FORMATS:
        raise RaysvError(f"unknown format {format!r}; one of {', '.join(INGEST_FORMATS)}")
    problems = Problems(strict=strict)
    if fs.is_local(out) and os.path.isdir(fs.resolve(out)[1]):
        raise RaysvError(f"--out {out} is a folder; give the Parquet file to write")
    summary: dict = {"format": format, "source": source, "out": out}
    if format == "trials":
        trials = parse_trials(source, problems)
        if manifest:
            trials = resolve_trials(
                trials, fs.read_table(manifest, ["utt_id", "path"]), source, problems
            )
        fs.write_table(trials, out)
        summary.update(rows=trials.num_rows, target=int(sum(trials.column("label").to_pylist())))
    else:
        info: dict = {}
        scan = {
            "voxceleb": ingest.scan_voxceleb,
            "librispeech": ingest.scan_librispeech,
            "kaldi": lambda src, pr: ingest.scan_kaldi(src, pr, wav_root, info),
        }.get(format)
        cands = (
            scan(source, problems) if scan else ingest.scan_dialogues(source, problems, audio_root)
        )
        utts = ingest.probe_rows(cands, problems, deep=deep)
        if utts.num_rows == 0:
            raise RaysvError(
                f"{source}: no usable audio found"
                + ("; " + "; ".join(problems.summary_lines()) if problems.items else "")
            )
        if format == "dialogues":
            utts, dialogues = ingest.build_dialogues(utts, problems)
            dpath = dialogues_out or os.path.splitext(out)[0] + ".dialogues.parquet"
            fs.write_table(dialogues, dpath)
            summary.update(dialogues=dialogues.num_rows, dialogues_out=dpath)
        fs.write_table(utts, out)
        summary.update(info)  # kaldi: the base of wav.scp's relative paths
        spk = utts.column("speaker").drop_null().unique()
        summary.update(
            rows=utts.num_rows,
            speakers=len(spk),
            hours=round(sum(utts.column("duration_s").to_pylist()) / 3600, 3),
        )
    summary["skipped"] = problems.counts()
    summary["problems"] = problems.summary_lines()
    if problems.items and fs.is_local(out):
        rej = os.path.splitext(out)[0] + ".skipped.jsonl"
        problems.write_jsonl(rej)
        summary["skipped_list"] = rej
    return summary


def run_validate(
    utterances: str,
    *,
    dialogues: str | None = None,
    trials: Sequence[str] = (),
    check_audio: bool = False,
    deep: bool = False,
    strict: bool = False,
) -> dict:
    """Check the utterances manifest, and the dialogues table and trial lists against
    it; ``check_audio`` opens every file's header, ``deep`` decodes every file.

    The summary's ``ok`` is False when any problem was found (``strict``: the first
    one raises instead).
    """
    from raysv.data import fs, ingest
    from raysv.data.problems import Problems
    from raysv.data.schema import conform
    from raysv.data.trials import parse_trials, resolve_trials

    problems = Problems(strict=strict)
    utts = ingest.check_utterances(fs.read_table(utterances), utterances, problems)
    if check_audio or deep:
        utts = ingest.check_audio(utts, problems, deep=deep)
    summary: dict = {"utterances": utts.num_rows}
    if dialogues:
        dlg = conform(fs.read_table(dialogues), "dialogues", dialogues)
        known = set(utts.column("utt_id").to_pylist())
        for did, ids in zip(
            dlg.column("dialogue_id").to_pylist(), dlg.column("utt_ids").to_pylist(), strict=True
        ):
            usable = [u for u in ids or [] if u in known]
            if len(usable) < 2:
                problems.add(
                    "short_dialogue",
                    f"{dialogues} dialogue {did}",
                    f"has {len(usable)} usable utterance(s), needs at least 2",
                )
        summary["dialogues"] = dlg.num_rows
    for t in trials:
        summary.setdefault("trials", {})[t] = resolve_trials(
            parse_trials(t, problems), utts, t, problems
        ).num_rows
    summary["skipped"] = problems.counts()
    summary["problems"] = problems.summary_lines()
    summary["ok"] = not problems.items
    return summary
