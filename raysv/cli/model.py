"""Options of the commands that ship a trained encoder: export, verify."""

from __future__ import annotations

import argparse

from raysv.errors import RaysvError


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="encoder checkpoint (best_model.pt)")
    p.add_argument("--out", required=True, help="folder for model.onnx, model.ts, model.json")
    p.add_argument(
        "--centre-manifest",
        help="utterances whose mean embedding is the scoring centre (default: the run's "
        "manifests/train.parquet beside the checkpoint)",
    )
    p.add_argument(
        "--centre-utterances", type=int, default=2000, help="at most this many, seeded draw"
    )
    p.add_argument(
        "--dev-trials",
        help="dev trials resolved to utt_ids (Parquet; default: the run's inputs/dev_trials.parquet)",
    )
    p.add_argument(
        "--dev-utts", help="their utterances (default: the run's inputs/dev_utts.parquet)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=10.0, help="length policy: at most this much"
    )
    p.add_argument("--seed", type=int, default=0)


def export(a: argparse.Namespace) -> dict:
    from raysv.export.bundle import export_model

    return export_model(
        a.checkpoint,
        a.out,
        centre_manifest=a.centre_manifest,
        dev_trials=a.dev_trials,
        dev_utts=a.dev_utts,
        centre_utterances=a.centre_utterances,
        max_seconds=a.max_seconds,
        seed=a.seed,
    )


def verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", nargs="*", metavar="WAV", help="two recordings to compare")
    p.add_argument("--model", default="model", help="exported model folder (raysv export)")
    p.add_argument("--trials", help="trial list to score from audio (instead of two recordings)")
    p.add_argument("--root", help="with --trials: folder the trial entries are relative to")
    p.add_argument("--threshold", type=float, help="accept at score >= this (default: the card's)")
    p.add_argument(
        "--operating-point",
        choices=["eer", "min_dcf_0.01"],
        default="eer",
        help="which of the card's thresholds to use",
    )


def verify(a: argparse.Namespace) -> dict:
    from raysv.export.verify import verify_pair, verify_trials

    if a.trials:
        if a.audio or not a.root:
            raise RaysvError("--trials T scores a list: give --root AUDIO_DIR and no recordings")
        return verify_trials(a.trials, a.root, a.model, a.threshold, a.operating_point)
    if len(a.audio) != 2:
        raise RaysvError(f"give two recordings (or --trials), got {len(a.audio)}")
    return verify_pair(a.audio[0], a.audio[1], a.model, a.threshold, a.operating_point)
