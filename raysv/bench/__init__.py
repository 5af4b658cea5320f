"""Benchmarks: each prints figures (ratios against a baseline measured in the same run)
and writes a JSON result. Run with ``raysv bench NAME``."""

from __future__ import annotations

import json
import os
import platform
import time


def run(name: str, out_dir: str, quick: bool = False, **options) -> dict:
    """Run benchmark ``name`` and write its JSON under ``out_dir``; ``options`` go to
    the benchmark (``cluster``: ``sizes``)."""
    from raysv.bench import (
        autok,
        cluster,
        demo,
        embed,
        export,
        featurize,
        input,
        pretrain,
        stage1,
        stream,
        synth,
        tune,
    )

    fn = {
        "featurize": featurize.run,
        "synth": synth.run,
        "input": input.run,
        "pretrain": pretrain.run,
        "pretrain_gpu": pretrain.run_gpu,
        "stage1": stage1.run,
        "stream": stream.run,
        "cluster": cluster.run,
        "embed": embed.run,
        "export": export.run,
        "autok": autok.run,
        "demo": demo.run,
        "tune": tune.run,
    }[name]
    result = fn(quick=quick, **options)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    os.makedirs(out_dir, exist_ok=True)
    suffix = result.pop("file_suffix", "")  # e.g. autok's "_spk100": one file per setting
    path = os.path.join(out_dir, f"{name}{suffix}{'_quick' if quick else ''}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    result["written_to"] = path
    return result
