"""The ``raysv`` command: argument parsing and printing over library functions.

Each subcommand maps its options to one library call, which returns a summary
dict; it is printed as a short human summary (:mod:`raysv.reporting.text`), or as
JSON with ``--json``. Bad input (a :class:`RaysvError`) prints one clear line and
exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from raysv.cli import cluster, data, model, runs
from raysv.errors import raysv_cause
from raysv.reporting import text

# name: (module with NAME_args and NAME, one line of help); the text is text.NAME_text
_COMMANDS = {
    "synth": (data, "generate a speaker corpus folder with known speakers, dialogues and trials"),
    "ingest": (data, "import a folder, Kaldi dir, dialogues file or trial list into Parquet"),
    "validate": (data, "check manifests (and optionally their audio) for bad rows (exit 1 if any)"),
    "embed": (data, "embed every utterance of a manifest with Ray Data"),
    "evaluate": (data, "score a trial list: EER and minDCF"),
    "cluster": (cluster, "sharded faiss k-means over embeddings on Ray, with purification"),
    "pretrain": (runs, "Stage I: contrastive pretraining on dialogues (or SimCLR) with Ray Train"),
    "train": (
        runs,
        "Stage II: AAM-softmax on pseudo labels with a loss gate (none/lgl/dlg/dlg-lc)",
    ),
    "iterate": (runs, "Stage II in rounds: embed, cluster, purify, train, evaluate (resumable)"),
    "tune": (runs, "sweep a training stage's knobs with Ray Tune; best trial by dev EER"),
    "report": (runs, "write an HTML report with plots for an iterate or demo run"),
    "demo": (runs, "the end-to-end demo on a generated corpus (or --data DIR)"),
    "bench": (runs, "run a benchmark; prints figures and writes JSON"),
    "config": (runs, "list a command's settings: value, range and why each default"),
    "export": (model, "export an encoder checkpoint to ONNX + TorchScript with a model card"),
    "verify": (
        model,
        "score two recordings (accept/reject) or a trial list with an exported model",
    ),
}
COMMANDS: dict[str, tuple[str, Callable, Callable, Callable]] = {
    name: (
        help_text,
        getattr(mod, f"{name}_args"),
        getattr(mod, name),
        getattr(text, f"{name}_text"),
    )
    for name, (mod, help_text) in _COMMANDS.items()
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
