"""Argument helpers the command modules share."""

from __future__ import annotations

import argparse

GLOBAL_OPTIONS = ("command", "json", "verbose", "quiet")


def options(a: argparse.Namespace, *drop: str) -> dict:
    """The command's options as keyword arguments of its library function (same names)."""
    return {k: v for k, v in vars(a).items() if k not in GLOBAL_OPTIONS and k not in drop}


def overrides_arg(p: argparse.ArgumentParser, suffix: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``overrides``."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key{suffix}",
    )
