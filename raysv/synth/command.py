"""``raysv synth`` as a library call: generate a corpus folder, refusing to write over
anything but a corpus synth wrote (and that only with ``force``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from raysv.errors import RaysvError


def run_synth(
    out: str, *, config: str | None = None, overrides: Sequence[str] = (), force: bool = False
) -> dict:
    """Write a corpus to the folder ``out`` from SynthConfig keys (the YAML file
    ``config``, then ``KEY=VALUE`` ``overrides``); returns synth's summary dict."""
    from raysv.config import load_config
    from raysv.synth.corpus import SYNTH_MARKER, SynthConfig, synthesize_replacing

    cfg = load_config(SynthConfig, config, list(overrides))
    if os.path.exists(out) and not os.path.isdir(out):
        raise RaysvError(f"{out}: exists and is not a folder; synth writes a corpus folder there")
    if os.path.isdir(out) and os.listdir(out):
        if not force:
            raise RaysvError(f"{out} is not empty; pass --force to replace a corpus synth wrote")
        if not os.path.isfile(os.path.join(out, *SYNTH_MARKER)):
            raise RaysvError(
                f"{out}: not a corpus raysv synth wrote (no {'/'.join(SYNTH_MARKER)}); "
                "--force only replaces those; give a new or empty folder"
            )
    return synthesize_replacing(cfg, out)
