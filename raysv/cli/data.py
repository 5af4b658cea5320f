"""Options of the data commands: synth, ingest, validate, embed, evaluate."""

from __future__ import annotations

import argparse

from raysv.cli.common import options, overrides_arg
from raysv.data.commands import INGEST_FORMATS, run_ingest, run_validate
from raysv.embedding.command import run_embed
from raysv.evaluation.command import run_evaluate
from raysv.synth.command import run_synth


def synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="corpus folder to write")
    p.add_argument("--config", help="YAML file with SynthConfig keys")
    overrides_arg(p, " (repeatable)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")


def synth(a: argparse.Namespace) -> dict:
    return run_synth(**options(a))


def ingest_args(p: argparse.ArgumentParser) -> None:
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


def ingest(a: argparse.Namespace) -> dict:
    return run_ingest(**options(a))


def validate_args(p: argparse.ArgumentParser) -> None:
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


def validate(a: argparse.Namespace) -> dict:
    return run_validate(**options(a))


def embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", help="utterances manifest (Parquet)")
    p.add_argument("--out", required=True, help="folder for embedding shards")
    p.add_argument(
        "--model",
        help="exported model folder (raysv export): embed with ONNX Runtime here, no Ray",
    )
    p.add_argument(
        "--audio",
        metavar="DIR",
        help="with --model: embed every audio file under DIR (utt_id = path relative to DIR)",
    )
    p.add_argument("--threads", type=int, help="with --model: ONNX Runtime threads (default: all)")
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


def embed(a: argparse.Namespace) -> dict:
    return run_embed(**options(a))


def evaluate_args(p: argparse.ArgumentParser) -> None:
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
        "--model",
        help="exported model folder: subtract its card's centre before cosine scoring "
        "(embeddings from raysv embed --model; the rule of raysv verify)",
    )
    p.add_argument(
        "--cohort", help="embeddings table used as the AS-norm cohort (turns AS-norm on)"
    )
    p.add_argument("--top-k", type=int, default=300, help="AS-norm: cohort scores kept per side")
    p.add_argument("--strict", action="store_true", help="fail if any trial names an unknown file")


def evaluate(a: argparse.Namespace) -> dict:
    return run_evaluate(**options(a))
