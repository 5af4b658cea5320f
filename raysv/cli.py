"""The ``raysv`` command: thin argument parsing over library functions.

Each subcommand returns a summary dict; it is printed as a short human
summary, or as JSON with ``--json``. Bad input (a :class:`RaysvError`) prints
one clear line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable

from raysv.errors import RaysvError

log = logging.getLogger("raysv")


# ---------------------------------------------------------------- synth
def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="corpus folder to write")
    p.add_argument("--config", help="YAML file with SynthConfig keys")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")


def _synth(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.synth.corpus import SYNTH_MARKER, SynthConfig, synthesize_replacing

    cfg = load_config(SynthConfig, a.config, a.overrides)
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise RaysvError(f"{a.out}: exists and is not a folder; synth writes a corpus folder there")
    if os.path.isdir(a.out) and os.listdir(a.out):
        if not a.force:
            raise RaysvError(f"{a.out} is not empty; pass --force to replace a corpus synth wrote")
        if not os.path.isfile(os.path.join(a.out, *SYNTH_MARKER)):
            raise RaysvError(
                f"{a.out}: not a corpus raysv synth wrote (no {'/'.join(SYNTH_MARKER)}); "
                "--force only replaces those; give a new or empty folder"
            )
    return synthesize_replacing(cfg, a.out)


def _synth_human(s: dict) -> str:
    sp = s["speakers"]
    return (
        f"wrote {s['utterances']} utterances ({s['audio_hours']} h) of {sp['train']}+{sp['dev']}+{sp['test']} "
        f"train/dev/test speakers to {s['out']}\n"
        f"{s['dialogues']} dialogues ({s['multi_speaker_dialogues']} multi-speaker); "
        f"trials: dev {s['trials']['dev']}, test {s['trials']['test']}; {s['seconds']}s on {s['workers']} processes"
    )


# ---------------------------------------------------------------- ingest
INGEST_FORMATS = ("voxceleb", "librispeech", "kaldi", "dialogues", "trials")


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=INGEST_FORMATS, help="layout of SOURCE")
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="folder, Kaldi data dir, JSON-lines file or trial list (path or URI)",
    )
    p.add_argument(
        "--out", required=True, help="Parquet file to write (utterances, or trials for 'trials')"
    )
    p.add_argument(
        "--dialogues-out",
        help="for 'dialogues': where to write the dialogues table (default: <out>.dialogues.parquet)",
    )
    p.add_argument(
        "--audio-root",
        help="for 'dialogues': folder the utterance paths are relative to (default: the file's folder)",
    )
    p.add_argument(
        "--wav-root",
        help="for 'kaldi': folder the relative paths of wav.scp are relative to (default: the "
        "data dir if the first one exists there, else the current folder, as Kaldi recipes "
        "write them; the summary names the base used)",
    )
    p.add_argument(
        "--manifest", help="for 'trials': utterances manifest to resolve trial entries against"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad row instead of skipping and reporting it",
    )
    p.add_argument(
        "--deep", action="store_true", help="decode every file to catch NaN/inf samples (slower)"
    )


def _ingest(a: argparse.Namespace) -> dict:
    from raysv.data import fs, ingest
    from raysv.data.problems import Problems
    from raysv.data.trials import parse_trials, resolve_trials

    problems = Problems(strict=a.strict)
    if fs.is_local(a.out) and os.path.isdir(fs.resolve(a.out)[1]):
        raise RaysvError(f"--out {a.out} is a folder; give the Parquet file to write")
    summary: dict = {"format": a.format, "source": a.source, "out": a.out}
    if a.format == "trials":
        trials = parse_trials(a.source, problems)
        if a.manifest:
            trials = resolve_trials(
                trials, fs.read_table(a.manifest, ["utt_id", "path"]), a.source, problems
            )
        fs.write_table(trials, a.out)
        summary.update(rows=trials.num_rows, target=int(sum(trials.column("label").to_pylist())))
    else:
        info: dict = {}
        scan = {
            "voxceleb": ingest.scan_voxceleb,
            "librispeech": ingest.scan_librispeech,
            "kaldi": lambda src, pr: ingest.scan_kaldi(src, pr, a.wav_root, info),
        }.get(a.format)
        cands = (
            scan(a.source, problems)
            if scan
            else ingest.scan_dialogues(a.source, problems, a.audio_root)
        )
        utts = ingest.probe_rows(cands, problems, deep=a.deep)
        if utts.num_rows == 0:
            raise RaysvError(
                f"{a.source}: no usable audio found"
                + ("; " + "; ".join(problems.summary_lines()) if problems.items else "")
            )
        if a.format == "dialogues":
            utts, dialogues = ingest.build_dialogues(utts, problems)
            dpath = a.dialogues_out or os.path.splitext(a.out)[0] + ".dialogues.parquet"
            fs.write_table(dialogues, dpath)
            summary.update(dialogues=dialogues.num_rows, dialogues_out=dpath)
        fs.write_table(utts, a.out)
        summary.update(info)  # kaldi: the base of wav.scp's relative paths
        spk = utts.column("speaker").drop_null().unique()
        summary.update(
            rows=utts.num_rows,
            speakers=len(spk),
            hours=round(sum(utts.column("duration_s").to_pylist()) / 3600, 3),
        )
    summary["skipped"] = problems.counts()
    summary["problems"] = problems.summary_lines()
    if problems.items and fs.is_local(a.out):
        rej = os.path.splitext(a.out)[0] + ".skipped.jsonl"
        problems.write_jsonl(rej)
        summary["skipped_list"] = rej
    return summary


def _ingest_human(s: dict) -> str:
    lines = [f"{s['format']}: wrote {s['rows']} rows to {s['out']}"]
    if s.get("relative_paths_base"):
        lines.append(
            f"{s['relative_paths']} relative path(s) in wav.scp taken relative to "
            f"{s['relative_paths_base']} (stored absolute; --wav-root to choose)"
        )
    if "speakers" in s:
        lines[0] += f" ({s['speakers']} speakers, {s['hours']} h)"
    if "dialogues" in s:
        lines.append(f"{s['dialogues']} dialogues -> {s['dialogues_out']}")
    lines += [f"warning: {p}" for p in s["problems"]]
    if "skipped_list" in s:
        lines.append(f"all skipped rows listed in {s['skipped_list']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- validate
def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--utterances", required=True, help="utterances manifest (Parquet)")
    p.add_argument("--dialogues", help="dialogues table to check against the utterances")
    p.add_argument(
        "--trials",
        action="append",
        default=[],
        help="trial list to check against the utterances (repeatable)",
    )
    p.add_argument("--check-audio", action="store_true", help="open every file's header")
    p.add_argument("--deep", action="store_true", help="decode every file to catch NaN/inf samples")
    p.add_argument("--strict", action="store_true", help="fail at the first problem")


def _validate(a: argparse.Namespace) -> dict:
    from raysv.data import fs, ingest
    from raysv.data.problems import Problems
    from raysv.data.schema import conform
    from raysv.data.trials import parse_trials, resolve_trials

    problems = Problems(strict=a.strict)
    utts = ingest.check_utterances(fs.read_table(a.utterances), a.utterances, problems)
    if a.check_audio or a.deep:
        utts = ingest.check_audio(utts, problems, deep=a.deep)
    summary: dict = {"utterances": utts.num_rows}
    if a.dialogues:
        dlg = conform(fs.read_table(a.dialogues), "dialogues", a.dialogues)
        known = set(utts.column("utt_id").to_pylist())
        for did, ids in zip(
            dlg.column("dialogue_id").to_pylist(), dlg.column("utt_ids").to_pylist(), strict=True
        ):
            usable = [u for u in ids or [] if u in known]
            if len(usable) < 2:
                problems.add(
                    "short_dialogue",
                    f"{a.dialogues} dialogue {did}",
                    f"has {len(usable)} usable utterance(s), needs at least 2",
                )
        summary["dialogues"] = dlg.num_rows
    for t in a.trials:
        summary.setdefault("trials", {})[t] = resolve_trials(
            parse_trials(t, problems), utts, t, problems
        ).num_rows
    summary["skipped"] = problems.counts()
    summary["problems"] = problems.summary_lines()
    summary["ok"] = not problems.items
    return summary


def _validate_human(s: dict) -> str:
    head = "OK" if s["ok"] else "PROBLEMS FOUND"
    lines = [
        f"{head}: {s['utterances']} valid utterances"
        + (f", {s['dialogues']} dialogues" if "dialogues" in s else "")
    ]
    lines += [f"  {p}" for p in s["problems"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- embed
def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="utterances manifest (Parquet)")
    p.add_argument("--out", required=True, help="folder for embedding shards")
    p.add_argument(
        "--checkpoint",
        help="encoder checkpoint (best_model.pt of raysv pretrain); default: the baseline",
    )
    p.add_argument(
        "--max-seconds", type=float, default=10.0, help="embed at most this much of each utterance"
    )
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--concurrency", type=int, help="embedding actors (default: one per CPU)")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="forward passes on the cluster's GPUs where it has them (auto), or force cpu/gpu",
    )
    p.add_argument("--force", action="store_true", help="recompute even if the output is complete")
    p.add_argument("--normalise", action="store_true", help="L2-normalise every embedding")
    p.add_argument(
        "--average-sessions",
        metavar="DIR",
        help="also write per-session mean embeddings (utt_id = session_id) to DIR",
    )


def _check_manifest(uri: str) -> None:
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


def _embed(a: argparse.Namespace) -> dict:
    from raysv.embedding.baseline import BaselineEmbedder
    from raysv.embedding.extract import embed_manifest

    if not (math.isfinite(a.max_seconds) and a.max_seconds > 0):
        raise RaysvError(f"--max-seconds must be a positive number of seconds, got {a.max_seconds}")
    if a.n_mels < 3:
        raise RaysvError(f"--n-mels must be at least 3, got {a.n_mels}")
    if a.concurrency is not None and a.concurrency < 1:
        raise RaysvError(f"--concurrency must be at least 1 actor, got {a.concurrency}")
    _check_manifest(a.manifest)
    if a.average_sessions and os.path.realpath(a.average_sessions) == os.path.realpath(a.out):
        raise RaysvError(
            f"--average-sessions {a.average_sessions} is the --out folder; give another"
        )
    if a.checkpoint:
        from raysv.embedding.torch_embedder import TorchEmbedder
        from raysv.models.checkpoint import read_checkpoint

        read_checkpoint(a.checkpoint)  # missing, foreign or unsafe: one line, before Ray
        cls, kwargs = (
            TorchEmbedder,
            {"checkpoint": os.path.abspath(a.checkpoint), "max_seconds": a.max_seconds},
        )
    else:
        cls, kwargs = BaselineEmbedder, {"n_mels": a.n_mels, "max_seconds": a.max_seconds}
    s = embed_manifest(
        a.manifest,
        a.out,
        cls,
        kwargs,
        concurrency=a.concurrency,
        force=a.force,
        normalise=a.normalise,
        device=a.device if a.checkpoint else "cpu",  # the baseline embedder is numpy
    )
    if a.average_sessions:
        from raysv.embedding.extract import average_sessions

        s["sessions"] = average_sessions(a.out, a.manifest, a.average_sessions, force=a.force)
    return s


def _embed_human(s: dict) -> str:
    if s.get("skipped"):
        text = f"embeddings in {s['out']} already complete (use --force to recompute)"
    else:
        text = f"embedded {s['rows']} utterances into {s['out']} in {s['seconds']}s ({s['utts_per_s']}/s)"
        if s.get("unreadable"):
            first = s["unreadable_examples"][0]
            text += (
                f"\nskipped {s['unreadable']} with missing or unreadable audio (first: {first['path']}: "
                f"{first['reason']}); all listed in {s['out']}/_skipped-*.jsonl"
            )
    sess = s.get("sessions")
    if sess:
        text += f"\nsession means in {sess['out']}" + (
            f": {sess['sessions']} sessions" if "sessions" in sess else " (already complete)"
        )
    return text


# ---------------------------------------------------------------- evaluate
def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", help="trial list (VoxCeleb or Kaldi text, or Parquet)")
    p.add_argument("--embeddings", help="embeddings Parquet file or folder of shards")
    p.add_argument(
        "--pseudo-labels",
        help="pseudo-label table: report NMI/ARI/reliable share against the manifest's speakers",
    )
    p.add_argument("--manifest", help="utterances manifest: trial paths are matched to its paths")
    p.add_argument(
        "--center", action="store_true", help="subtract the mean embedding before cosine scoring"
    )
    p.add_argument(
        "--cohort", help="embeddings table used as the AS-norm cohort (turns AS-norm on)"
    )
    p.add_argument("--top-k", type=int, default=300, help="AS-norm: cohort scores kept per side")
    p.add_argument("--strict", action="store_true", help="fail if any trial names an unknown file")


def _evaluate(a: argparse.Namespace) -> dict:
    from raysv.evaluation.evaluate import evaluate, evaluate_clusters

    if a.pseudo_labels:
        if not a.manifest:
            raise RaysvError("--pseudo-labels needs --manifest (the speakers come from it)")
        return {"clustering": evaluate_clusters(a.pseudo_labels, a.manifest)}
    if not (a.trials and a.embeddings):
        raise RaysvError(
            "give --trials and --embeddings (verification) or --pseudo-labels and --manifest (clustering)"
        )
    return evaluate(
        a.trials,
        a.embeddings,
        a.manifest,
        strict=a.strict,
        center=a.center,
        cohort_uri=a.cohort,
        top_k=a.top_k,
    )


def _evaluate_human(s: dict) -> str:
    if "clustering" in s:
        c = s["clustering"]
        return "\n".join(
            f"{part}: NMI {c[part]['nmi']:.3f}  ARI {c[part]['ari']:.3f}  reliable {100 * c[part]['reliable_share']:.1f}%  "
            f"({c[part]['n_samples']} utterances, {c[part]['n_clusters']} clusters)"
            for part in ("all", "kept")
            if part in c
        )
    lines = [
        f"EER {s['eer']:.2f}%  minDCF(0.01) {s['min_dcf_0.01']:.3f}  minDCF(0.05) {s['min_dcf_0.05']:.3f}  "
        f"({s['n_target']} target / {s['n_nontarget']} non-target trials)"
    ]
    if "merge_threshold" in s:
        lines.append(
            f"merge threshold for automatic k: {s['merge_threshold']:.4f} (from dev trials: "
            f"raysv cluster --k auto --merge-threshold)"
        )
    lines += [f"warning: {p}" for p in s["skipped_examples"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- cluster
def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embeddings", required=True, help="embeddings Parquet file or folder of shards"
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder for the pseudo-label table (Parquet parts), or for the elbow table and plot",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--k",
        type=_k_value,
        help="number of clusters, or auto: chosen from the embeddings (merging down to "
        "--merge-threshold, else by the silhouette; evidence in OUT/_auto_k.json and .png)",
    )
    which.add_argument(
        "--elbow",
        type=_int_list,
        metavar="K1,K2,...",
        help="instead of clustering: the objective for each k (table, plot, suggested k)",
    )
    p.add_argument(
        "--merge-threshold",
        type=float,
        metavar="COSINE",
        help="with --k auto: merge groups while their mean cosine similarity is at least this "
        "(raysv evaluate on the dev trials, plain cosine, prints it); without it, k is the "
        "silhouette rule's, which under-clusters weak embeddings",
    )
    p.add_argument("--iterations", type=int, default=20, help="at most this many (default 20)")
    p.add_argument(
        "--early-stop",
        type=_early_stop,
        default=0.0,
        metavar="FRACTION",
        help="stop once the objective falls by at most this fraction of its last value "
        "(faiss's early_stop_threshold and default, 0: once it stops falling; -1: never)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--spherical",
        action="store_true",
        help="cosine k-means: unit-length embeddings and centroids",
    )
    p.add_argument(
        "--shards",
        type=int,
        help="Ray actors holding the embeddings (default: two per node, one per GPU on GPUs; "
        "each searches with its share of the cores)",
    )
    p.add_argument(
        "--drop-fraction",
        type=_auto_or(float),
        default=0.0,
        help="purification p: share farthest from centroids dropped; auto: from the mean "
        "cluster size (raysv.clustering.auto_schedule)",
    )
    p.add_argument(
        "--min-cluster-size",
        type=_auto_or(int),
        default=1,
        help="purification S: smaller clusters dropped; auto: from the mean cluster size",
    )
    p.add_argument("--round", type=int, default=1, help="round number written into the table")
    p.add_argument(
        "--max-points-per-centroid",
        type=int,
        default=256,
        help="iterate on a sample of this many points per centroid (faiss's default); all points get a final assignment",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="where the shards search: GPU where the Ray cluster has one (auto), or force cpu/gpu",
    )
    p.add_argument(
        "--init",
        choices=["random", "kmeans++"],
        help="initial centroids: random sample (faiss's) or k-means++ on a sample "
        "(default: random; kmeans++ with --elbow)",
    )
    p.add_argument(
        "--manifest",
        help="utterances manifest with speakers: NMI/ARI before/after purification (analysis only)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the parent of --out)",
    )
    p.add_argument("--experiment", default="raysv-cluster", help="MLflow experiment name")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def _int_list(text: str) -> list[int]:
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 20,40,80; got {text!r}"
        ) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return ks


def _early_stop(text: str) -> float:
    """``--early-stop``: a fraction in [0, 1), or -1 (never stop early)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction such as 0.001, got {text!r}"
        ) from None
    if v != -1 and not 0 <= v < 1:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"expected a fraction in [0, 1), or -1 (never), got {text!r}"
        )
    return v


def _auto_or(kind):
    """An argparse type: ``auto`` or a value of ``kind``."""

    def parse(text: str):
        if text == "auto":
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {kind.__name__} or auto, got {text!r}"
            ) from None

    return parse


def _k_value(text: str) -> int | str:
    """``--k``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of clusters or auto, got {text!r}"
        ) from None


def _cluster(a: argparse.Namespace) -> dict:
    from raysv.clustering.driver import cluster, elbow, log_to_mlflow
    from raysv.clustering.sharded import KMeansSpec

    spec = KMeansSpec(
        iterations=a.iterations,
        seed=a.seed,
        spherical=a.spherical,
        early_stop=a.early_stop,
        max_points_per_centroid=a.max_points_per_centroid,
        init=a.init or ("kmeans++" if a.elbow else "random"),
    )
    if a.elbow:
        summary = elbow(a.embeddings, a.out, a.elbow, spec, shards=a.shards, device=a.device)
    else:
        summary = cluster(
            a.embeddings,
            a.out,
            a.k,
            spec,
            shards=a.shards,
            device=a.device,
            drop_fraction=a.drop_fraction,
            min_cluster_size=a.min_cluster_size,
            round_=a.round,
            manifest=a.manifest,
            plots=True,
            merge_threshold=a.merge_threshold,
        )
    if not a.no_tracking:
        from raysv.tracking.mlflow_tracking import default_tracking_uri

        uri = a.tracking_uri or default_tracking_uri(os.path.dirname(os.path.abspath(a.out)))
        skip = {"json", "verbose", "quiet", "command", "tracking_uri", "experiment", "no_tracking"}
        params = {k: v for k, v in vars(a).items() if k not in skip and v is not None}
        name = "elbow" if a.elbow else f"cluster-k{a.k}"
        summary["mlflow"] = {
            "tracking_uri": uri,
            "run_id": log_to_mlflow(summary, uri, a.experiment, name, params),
        }
    return summary


def _cluster_human(s: dict) -> str:
    if "elbow" in s:
        lines = [f"{'k':>8}  {'objective':>14}  {'per point':>10}  {'seconds':>8}"]
        lines += [
            f"{r['k']:>8}  {r['objective']:>14.6g}  {r['objective_per_point']:>10.4g}  {r['seconds']:>8}"
            for r in s["elbow"]
        ]
        lines.append(
            f"suggested k: {s['suggested_k']} ({s['rule']})"
            if s["suggested_k"] is not None
            else "suggested k: none (needs at least 3 values of k and a bend in the curve)"
        )
        lines.append(f"table and plot: {s['files']['csv']}, {s['files']['png']}")
        return "\n".join(lines + _mlflow_line(s))
    cs = s["cluster_sizes"]
    lines = [
        f"k-means: {s['embeddings']} embeddings, k={s['k']}, {s['iterations']} of at most "
        f"{s.get('max_iterations', s['iterations'])} iterations, objective {s['objective']:.6g}, "
        f"{s['seconds']}s",
        f"cluster sizes: min {cs['min']}, median {cs['median']:g}, max {cs['max']}, empty {cs['empty']}",
        f"purification kept {100 * s['kept_share']:.1f}% in {s['clusters_after_purification']} clusters -> {s['out']}",
        *(f"warning: {w}" for w in s.get("warnings", [])),
    ]
    if s.get("auto_k"):
        auto = s["auto_k"]
        if auto.get("method") == "merge":
            curve = ", ".join(f"{r['threshold']:.3f}: {r['k']}" for r in auto["table"][::4])
            lines.append(
                f"k = {auto['k']} chosen from the embeddings: {auto['rule']} "
                f"(k at other thresholds: {curve}); plot {auto['plot']}"
            )
        else:
            lines.append(
                f"k = {auto['k']} chosen from the embeddings: best silhouette over k = "
                + ", ".join(f"{r['k']} ({r['silhouette']:.3f})" for r in auto["table"])
                + f"; plot {auto['plot']}"
            )
    for part, r in s.get("analysis", {}).items():
        if isinstance(r, dict):
            lines.append(
                f"{part}: NMI {r['nmi']:.3f}  ARI {r['ari']:.3f}  reliable {100 * r['reliable_share']:.1f}%"
            )
    return "\n".join(lines + _mlflow_line(s))


def _mlflow_line(s: dict) -> list[str]:
    m = s.get("mlflow")
    return [f"MLflow: {m['tracking_uri']} run {m['run_id']}"] if m else []


# ---------------------------------------------------------------- demo
CORPUS_LAYOUT = """\
a corpus folder (--data DIR) holds any of:
  DIR/wav/<speaker>/<session>/<utt>.wav    labelled audio (VoxCeleb-style); speakers that
                                           no trial names are training audio too
  DIR/unlabeled/**/<any name>.<ext>        unlabeled training audio, any depth
  DIR/unlabeled.txt                        more training audio: paths relative to DIR
  DIR/dialogues.jsonl                      {"dialogue_id": ..., "utterances": [paths relative
                                           to DIR, in any folder]}: Stage I in dialogue mode
  DIR/trials/dev.txt, DIR/trials/test.txt  VoxCeleb-format trials, paths relative to DIR/wav
audio: WAV, FLAC, OGG/Vorbis/Opus, MP3 (what libsndfile decodes); .m4a and other
formats are skipped and listed with the ffmpeg line that converts them.
Trial utterances and all audio of the wav/ speakers they draw from are never
trained on. Paths in DIR's files that leave DIR are refused unless
--allow-outside-paths. Without dialogues.jsonl Stage I trains on utterances (SimCLR).
"""


def _corpus_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="import audio that DIR's dialogues.jsonl / unlabeled.txt name outside DIR "
        "(../, absolute, file://, s3://)",
    )


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.epilog = CORPUS_LAYOUT
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", help="corpus folder to use instead of generating one (see below)")
    _corpus_flag(p)
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--config", help="YAML file with DemoConfig keys")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. synth.train_speakers=80",
    )


def _demo(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.pipeline.demo import DemoConfig, run_demo

    overrides = list(a.overrides) + [f"out={a.out}"] + ([f"data={a.data}"] if a.data else [])
    if a.allow_outside_paths:
        overrides.append("allow_outside_paths=true")
    return run_demo(load_config(DemoConfig, a.config, overrides))


def round_kept_line(r: dict) -> str | None:
    """One line when Stage II round ``r`` kept the encoder it started from, with why."""
    if r.get("train.best_epoch") != -1:
        return None
    init, best = r.get("train.init_dev_eer"), r.get("train.best_epoch_dev_eer")
    why = (
        f"no training epoch beat its dev EER of {init:.2f}%"
        if init is not None
        else "no training epoch beat it on the dev trials"
    )
    if best is not None:
        why += f", the best reached {best:.2f}%"
    return (
        f"round {r['round']}: kept the encoder it started from ({why}; "
        f"{r.get('train_epochs', '?')} epochs trained): its figures repeat the previous row's"
    )


def label_free_ratio(results: dict) -> str | None:
    """``label-free / supervised`` test EER of the last stage against the reference."""
    ref = results.get("supervised_reference", {}).get("test")
    rounds = [k for k in results if k.startswith("round")]
    last = results.get(rounds[-1] if rounds else "stage1", {}).get("test")
    if not ref or not last or not ref.get("eer"):
        return None
    name = rounds[-1].replace("round", "Stage II round ") if rounds else "Stage I"
    return (
        f"label-free / supervised test EER: {last['eer'] / ref['eer']:.2f}x "
        f"({name} {last['eer']:.2f}% vs {ref['eer']:.2f}% with the true speakers)"
    )


def _demo_human(s: dict) -> str:
    names = {
        "baseline": "baseline (log-mel mean+std, cosine)",
        "stage1": "Stage I encoder",
        "supervised_reference": "supervised reference (true labels)",
    }
    lines = [f"run folder: {s['out']}  ({s['seconds']}s)"]
    ing = s.get("ingest", {})
    if "train_utterances" in ing:
        lines.append(
            f"corpus: {ing['utterances']} utterances; training on {ing['train_utterances']}, "
            f"{ing['held_out_utterances']} held out for evaluation"
            + (f"; {sum(ing['skipped'].values())} files skipped" if ing.get("skipped") else "")
        )
    for r in s.get("stage2", {}).get("rounds", []):
        if r.get("k_auto"):
            lines.append(f"round {r['round']}: k = {r['k']} chosen from the embeddings")
        kept = round_kept_line(r)
        if kept:
            lines.append(kept)
    if s.get("stage2", {}).get("reference_skipped"):
        lines.append(f"no supervised reference: {s['stage2']['reference_skipped']}")
    for stage, row in s["results"].items():
        name = names.get(stage, stage.replace("round", "Stage II round "))
        for split in ("dev", "test"):
            r = row.get(split)
            if r:
                text = (
                    f"{name} {split}: EER {r['eer']:.2f}%  minDCF(0.01) {r['min_dcf_0.01']:.3f}  "
                    f"minDCF(0.05) {r['min_dcf_0.05']:.3f}"
                )
                if "n_target" in s["baseline"][split] and stage == "baseline":
                    b = s["baseline"][split]
                    text += f"  [{b['n_target']}+{b['n_nontarget']} trials]"
                lines.append(text)
        if "nmi" in row:
            text = f"{name}: pseudo-label NMI {row['nmi']:.3f}"
            if "nmi_after" in row:
                text += f" (clustering with its encoder: {row['nmi_after']:.3f})"
            lines.append(text)
    ratio = label_free_ratio(s["results"])
    if ratio:
        lines.append(ratio)
    s1 = s.get("stage1", {})
    if s1.get("rejection_auc") is not None:
        text = f"rejection weights vs multi-speaker dialogues: ROC AUC {s1['rejection_auc']:.3f}"
        if s1.get("rejection_auc_ceiling") is not None:
            text += f" (at most {s1['rejection_auc_ceiling']:.3f} with these draws)"
        if s1.get("rejection_auc_drawn") is not None:
            text += f"; vs draws that mix speakers: {s1['rejection_auc_drawn']:.3f}"
        lines.append(text)
    if s.get("report"):
        lines.append(f"report: {s['report']}")
    lines.append(f"MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- pretrain
def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.epilog = CORPUS_LAYOUT
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", help="corpus folder (see below)")
    _corpus_flag(p)
    p.add_argument(
        "--config", help="YAML file with PretrainConfig keys (see configs/pretrain_*.yaml)"
    )
    p.add_argument("--out", help="run folder (default from the config: runs/pretrain)")
    p.add_argument(
        "--run-name", help="run name; rerunning the same name in the same folder resumes it"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. train.epochs=5",
    )


def _pretrain(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.training.config import PretrainConfig
    from raysv.training.pretrain import run_pretrain

    extra = [f"data.data={a.data}"] if a.data else []
    extra += ["data.allow_outside_paths=true"] if a.allow_outside_paths else []
    extra += [f"out={a.out}"] if a.out else []
    extra += [f"run_name={a.run_name}"] if a.run_name else []
    return run_pretrain(load_config(PretrainConfig, a.config, list(a.overrides) + extra))


def _unreadable_line(s: dict) -> list[str]:
    """A warning line for training rows skipped as unreadable, if any."""
    if not s.get("unreadable_rows"):
        return []
    return [
        f"WARNING: skipped {s['unreadable_rows']} training rows with unreadable audio "
        f"(first: {s['unreadable_examples'][0]})"
    ]


def _pretrain_human(s: dict) -> str:
    lines = [f"run folder: {s['out']}  ({s['epochs']} epochs, {s['steps']} steps, {s['seconds']}s)"]
    if "train_utterances" in s:
        lines.append(
            f"trained on {s['train_utterances']} utterances; "
            f"{s['held_out_utterances']} held out for evaluation"
        )
    f = s["final"]
    for split in ("dev", "test"):
        if f"best.{split}.eer" in f:
            lines.append(
                f"{split}: untrained EER {f[f'untrained.{split}.eer']:.2f}% minDCF(0.01) {f[f'untrained.{split}.min_dcf_0.01']:.3f}"
                f"  ->  best checkpoint EER {f[f'best.{split}.eer']:.2f}% minDCF(0.01) {f[f'best.{split}.min_dcf_0.01']:.3f}"
            )
    last = s["history"][-1] if s["history"] else {}
    if "rejection_auc" in last:
        text = f"rejection weights vs multi-speaker truth: ROC AUC {last['rejection_auc']:.3f}"
        if "rejection_auc_ceiling" in last:
            text += f" (at most {last['rejection_auc_ceiling']:.3f} with these draws)"
        if "rejection_auc_drawn" in last:
            text += f"; vs draws that mix speakers: {last['rejection_auc_drawn']:.3f}"
        lines.append(text + " (last epoch)")
    lines.append(
        f"best model: {s['best_model']}   MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}"
    )
    return "\n".join(lines + _unreadable_line(s))


# ---------------------------------------------------------------- train / iterate / report
def _config_args(p: argparse.ArgumentParser, what: str, example: str) -> None:
    """``--config``, ``--out``, ``--set`` shared by the config-driven commands."""
    p.add_argument("--config", help=f"YAML file with {what} keys")
    p.add_argument("--out", help="run folder (default from the config)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. {example}",
    )


def _flag_overrides(*pairs: tuple[str, object]) -> list[str]:
    """``key=value`` overrides for the command-line flags that were given."""
    return [f"{key}={val}" for key, val in pairs if val is not None]


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", help="pseudo-label table (file or folder) from raysv cluster")
    p.add_argument("--manifest", help="utterances manifest (Parquet)")
    p.add_argument("--init", help="initial encoder checkpoint (best_model.pt of Stage I)")
    p.add_argument("--gate", choices=["none", "lgl", "dlg", "dlg-lc"], help="loss gate")
    p.add_argument("--dev-trials", help="dev trials (Parquet or text): picks the best epoch")
    p.add_argument("--test-trials", help="test trials: reported only")
    _config_args(p, "Stage2Config", "gate.tau=3")


def _train(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.training.stage2 import run_train
    from raysv.training.stage2_config import Stage2Config

    extra = _flag_overrides(
        ("data.labels", a.labels),
        ("data.utterances", a.manifest),
        ("init_checkpoint", a.init),
        ("gate.name", a.gate),
        ("data.dev_trials", a.dev_trials),
        ("data.test_trials", a.test_trials),
        ("out", a.out),
    )
    return run_train(load_config(Stage2Config, a.config, list(a.overrides) + extra))


def _train_human(s: dict) -> str:
    lines = [
        f"run folder: {s['out']}  ({s['epochs']} epochs, {s['steps']} steps, {s['seconds']}s; "
        f"{s['n_classes']} classes, {s['train_utterances']} utterances)"
    ]
    f = s["final"]
    for split in ("dev", "test"):
        if f"best.{split}.eer" in f:
            before = (
                f"initial EER {f[f'init.{split}.eer']:.2f}%  ->  "
                if f"init.{split}.eer" in f
                else ""
            )
            lines.append(
                f"{split}: {before}best EER {f[f'best.{split}.eer']:.2f}% "
                f"minDCF(0.01) {f[f'best.{split}.min_dcf_0.01']:.3f}"
            )
    last = s["history"][-1] if s["history"] else {}
    if "gate_pass_share" in last:
        text = f"gate (last epoch): {100 * last['gate_pass_share']:.1f}% passed"
        if last.get("gate_relabel_share"):
            text += f", {100 * last['gate_relabel_share']:.1f}% relabelled"
        if "reliable_share_passed" in last:
            text += (
                f"; reliable labels among passed {100 * last['reliable_share_passed']:.1f}% "
                f"vs all {100 * last['reliable_share_all']:.1f}% (analysis)"
            )
        lines.append(text)
    lines.append(
        f"best model: {s['best_model']}   MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}"
    )
    return "\n".join(lines + _unreadable_line(s))


def _iterate_args(p: argparse.ArgumentParser) -> None:
    p.epilog = CORPUS_LAYOUT
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", help="corpus folder (see below)")
    _corpus_flag(p)
    p.add_argument("--init", help="Stage I encoder checkpoint (best_model.pt)")
    p.add_argument("--rounds", type=int, help="number of rounds R")
    _config_args(p, "IterateConfig", "schedule.k=[60,60] train.gate.name=lgl")


def _iterate(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.pipeline.iterate import IterateConfig, run_iterate

    extra = _flag_overrides(
        ("data", a.data), ("init_checkpoint", a.init), ("rounds", a.rounds), ("out", a.out)
    )
    extra += ["allow_outside_paths=true"] if a.allow_outside_paths else []
    return run_iterate(load_config(IterateConfig, a.config, list(a.overrides) + extra))


def _scores_line(name: str, scores: dict) -> list[str]:
    return [
        f"{name} {split}: EER {r['eer']:.2f}%  minDCF(0.01) {r['min_dcf_0.01']:.3f}  "
        f"minDCF(0.05) {r['min_dcf_0.05']:.3f}"
        for split, r in scores.items()
    ]


def _round_scores(r: dict) -> dict:
    """``{"test.eer": ..}`` entries of a round -> ``{"test": {"eer": ..}}``."""
    out: dict = {}
    for key, v in r.items():
        split, _, metric = key.partition(".")
        if split in ("dev", "test"):
            out.setdefault(split, {})[metric] = v
    return out


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="corpus folder for a Stage I sweep (sets base.data.data)")
    _config_args(p, "SweepConfig", "repeats=2")


def _tune(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.tuning.sweep import SweepConfig, run_sweep

    extra = _flag_overrides(("base.data.data", a.data), ("out", a.out))
    return run_sweep(load_config(SweepConfig, a.config, list(a.overrides) + extra))


def _tune_human(s: dict) -> str:
    lines = [f"sweep folder: {s['out']}  ({len(s['trials'])} trials, {s['seconds']}s)"]
    for r in s["trials"]:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(
            f"  trial {r['trial']:3d}  dev EER {r['dev_eer']:6.2f}%  test EER {r['test_eer']:6.2f}%  {params}"
        )
    lines += [f"  failed: {e}" for e in s["failed_trials"]]
    b = s["best"]
    lines.append(
        f"best (lowest dev EER): trial {b['trial']}  dev {b['dev_eer']:.2f}%  test {b['test_eer']:.2f}%  "
        f"model {b['best_model']}"
    )
    lines.append(f"MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}")
    return "\n".join(lines)


def _iterate_human(s: dict) -> str:
    lines = [f"run folder: {s['out']}  ({s['seconds']}s)"]
    lines += _scores_line("initial encoder", s["initial"])
    for r in s["rounds"]:
        text = f"round {r['round']}: {r['clusters']} clusters, kept {100 * r['kept_share']:.1f}%"
        if "all.nmi" in r:
            text += f", NMI {r['all.nmi']:.3f}"
        if "gate.gate_pass_share" in r:
            text += f", gate passed {100 * r['gate.gate_pass_share']:.1f}%"
        lines.append(text)
        lines += _scores_line(f"  round {r['round']}", _round_scores(r))
    fc = s.get("final_clustering", {}).get("analysis", {}).get("all")
    if fc:
        lines.append(f"clustering with the final encoder: NMI {fc['nmi']:.3f}")
    if "reference" in s:
        lines += _scores_line("supervised reference (true labels)", s["reference"]["scores"])
    lines.append(f"MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}")
    return "\n".join(lines)


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder of raysv iterate or raysv demo")
    p.add_argument("--out", help="report folder (default: RUN/report)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")


def _report(a: argparse.Namespace) -> dict:
    from raysv.reporting.report import write_report

    return write_report(a.run, a.out, log_to_mlflow=not a.no_mlflow)


def _report_human(s: dict) -> str:
    lines = [f"report: {s['report']}", f"plots: {', '.join(sorted(s['plots']))}"]
    if "mlflow" in s:
        lines.append(f"logged to MLflow run {s['mlflow']['run_id']} (artifacts/report)")
    return "\n".join(lines)


# ---------------------------------------------------------------- bench
def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name",
        choices=[
            "featurize",
            "synth",
            "input",
            "pretrain",
            "pretrain_gpu",
            "stream",
            "cluster",
            "embed",
            "autok",
        ],
        help="benchmark to run",
    )
    p.add_argument("--out", default="bench/results", help="folder for the JSON result")
    p.add_argument(
        "--quick", action="store_true", help="a small configuration (seconds, for tests)"
    )


def _bench(a: argparse.Namespace) -> dict:
    from raysv import bench

    return bench.run(a.name, a.out, quick=a.quick)


def _bench_human(s: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in s.items())


COMMANDS: dict[str, tuple[str, Callable, Callable, Callable]] = {
    "synth": (
        "generate a speaker corpus folder with known speakers, dialogues and trials",
        _synth_args,
        _synth,
        _synth_human,
    ),
    "ingest": (
        "import a folder, Kaldi dir, dialogues file or trial list into Parquet",
        _ingest_args,
        _ingest,
        _ingest_human,
    ),
    "validate": (
        "check manifests (and optionally their audio) for bad rows (exit 1 if any)",
        _validate_args,
        _validate,
        _validate_human,
    ),
    "embed": (
        "embed every utterance of a manifest with Ray Data",
        _embed_args,
        _embed,
        _embed_human,
    ),
    "evaluate": ("score a trial list: EER and minDCF", _evaluate_args, _evaluate, _evaluate_human),
    "cluster": (
        "sharded faiss k-means over embeddings on Ray, with purification",
        _cluster_args,
        _cluster,
        _cluster_human,
    ),
    "pretrain": (
        "Stage I: contrastive pretraining on dialogues (or SimCLR) with Ray Train",
        _pretrain_args,
        _pretrain,
        _pretrain_human,
    ),
    "train": (
        "Stage II: AAM-softmax on pseudo labels with a loss gate (none/lgl/dlg/dlg-lc)",
        _train_args,
        _train,
        _train_human,
    ),
    "iterate": (
        "Stage II in rounds: embed, cluster, purify, train, evaluate (resumable)",
        _iterate_args,
        _iterate,
        _iterate_human,
    ),
    "tune": (
        "sweep a training stage's knobs with Ray Tune; best trial by dev EER",
        _tune_args,
        _tune,
        _tune_human,
    ),
    "report": (
        "write an HTML report with plots for an iterate or demo run",
        _report_args,
        _report,
        _report_human,
    ),
    "demo": (
        "the end-to-end demo on a generated corpus (or --data DIR)",
        _demo_args,
        _demo,
        _demo_human,
    ),
    "bench": ("run a benchmark; prints figures and writes JSON", _bench_args, _bench, _bench_human),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raysv", description="Label-free speaker-recognition training on Ray."
    )
    parser.add_argument(
        "--version", action="version", version=f"raysv {__import__('raysv').__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, _, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return parser


def raysv_cause(exc: BaseException) -> RaysvError | None:
    """The raysv error behind ``exc``: itself, or the first one along the chain of
    causes that Ray's wrappers keep (``cause``, ``__cause__``, ``__context__``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, RaysvError) and not isinstance(cause, RaysvError):
            return e
        todo += [cause if isinstance(cause, BaseException) else None, e.__cause__, e.__context__]
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    _, _, run, human = COMMANDS[args.command]
    try:
        summary = run(args)
    except Exception as exc:
        # Raised in a Ray task or actor (or a Ray Data UDF, or a Train worker), a raysv
        # error arrives wrapped, with the remote traceback as its text: print its cause.
        err = raysv_cause(exc)
        if err is None:
            raise  # a bug: the traceback is what a report needs
        print(f"raysv {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, default=str) if args.json else human(summary))
    # validate: exit 1 when it found problems (a script can tell), 2 stays for errors
    return 1 if args.command == "validate" and summary.get("ok") is False else 0


if __name__ == "__main__":
    sys.exit(main())
