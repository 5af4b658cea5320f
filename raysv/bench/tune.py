"""ASHA against running every trial to the end: the same random sweep of Stage I, twice.

Generates a corpus (the demo's small one, ``synth.seed`` 0), then runs the same
``samples`` seeded draws of the rejection temperature T (log-uniform 2-15) and
threshold t (uniform 0.2-0.8), every trial a small Stage I of ``epochs``
epochs: once with ASHA (grace 1 epoch, reduction factor 2) and once without a
scheduler. Reports how many trials ASHA stopped, the epochs trained and the
wall time of each sweep (ratio against the sweep without a scheduler, measured
in the same run), and whether both sweeps pick the same best trial (lowest dev
EER of the finished trials). Runs under ``runs/bench_tune`` (kept: a rerun
resumes or reuses the sweeps; delete it for a fresh measurement). About 25
minutes on 2 cores; ``--quick`` (4 trials of 2 epochs) about 5.
"""

from __future__ import annotations

import os
import time

from raysv.config import from_dict


def _sweep(out: str, corpus: str, samples: int, epochs: int, scheduler: str) -> dict:
    from raysv.tuning.sweep import SweepConfig, run_sweep

    cfg = from_dict(
        SweepConfig,
        {
            "out": out,
            "stage": "pretrain",
            "search": "random",
            "samples": samples,
            "seed": 0,
            "scheduler": {"name": scheduler, "grace_period": 1, "reduction_factor": 2},
            "base": {
                "data": {
                    "data": corpus,
                    "crop_seconds": 1.5,
                    "n_mels": 40,
                    "augment": {"prob": 0.0},
                },
                "model": {"name": "ecapa", "kwargs": {"channels": 32, "embed_dim": 64}},
                "loss": {"name": "ava", "rejection": {"enabled": True}},
                "optim": {"lr": 0.003},
                "train": {"epochs": epochs, "batch_size": 16, "num_workers": 1},
            },
            "space": {
                "loss.rejection.temperature": {"loguniform": [2.0, 15.0]},
                "loss.rejection.threshold": {"uniform": [0.2, 0.8]},
            },
        },
    )
    t0 = time.monotonic()
    s = run_sweep(cfg)
    return {
        "wall_seconds": round(time.monotonic() - t0, 1),
        "counts": s["counts"],
        "epochs_trained": sum(r.get("epochs") or 0 for r in s["trials"]),
        "best": {k: s["best"][k] for k in ("trial", "params", "dev_eer", "test_eer")},
        "trials": [
            {k: r.get(k) for k in ("trial", "status", "epochs", "dev_eer", "params")}
            for r in s["trials"]
        ],
    }


def run(quick: bool = False) -> dict:
    from raysv.pipeline.demo import DemoConfig
    from raysv.synth.corpus import synthesize

    samples, epochs = (4, 2) if quick else (8, 4)
    root = os.path.abspath("runs/bench_tune" + ("_quick" if quick else ""))
    corpus = os.path.join(root, "corpus")
    if not os.path.isfile(os.path.join(corpus, "dialogues.jsonl")):
        synthesize(DemoConfig().synth, corpus)
    asha = _sweep(os.path.join(root, "asha"), corpus, samples, epochs, "asha")
    full = _sweep(os.path.join(root, "none"), corpus, samples, epochs, "none")
    result = {
        "trials": samples,
        "epochs_per_trial": epochs,
        "asha": asha,
        "no_scheduler": full,
        "stopped_by_asha": asha["counts"]["stopped"],
        "wall_ratio_asha_over_none": round(asha["wall_seconds"] / full["wall_seconds"], 3),
        "epochs_ratio_asha_over_none": round(asha["epochs_trained"] / full["epochs_trained"], 3),
        "same_best_trial": asha["best"]["trial"] == full["best"]["trial"],
    }
    print(
        f"ASHA stopped {result['stopped_by_asha']} of {samples} trials; epochs trained "
        f"{asha['epochs_trained']} vs {full['epochs_trained']} "
        f"(x{result['epochs_ratio_asha_over_none']}); wall {asha['wall_seconds']} s vs "
        f"{full['wall_seconds']} s (x{result['wall_ratio_asha_over_none']}); best trial "
        f"{asha['best']['trial']} vs {full['best']['trial']} "
        f"(dev EER {asha['best']['dev_eer']} vs {full['best']['dev_eer']})"
    )
    return result
