"""The README's main command, ``raysv demo`` with its defaults, over 3 seeds.

Each seed changes the generated corpus (``synth.seed``) and the training
seeds of Stage I and Stage II (model initialisation, data order). Reports,
per stage (baseline, Stage I, each round, supervised reference), the mean and
range over seeds of dev / test EER and minDCF(0.01) and of NMI, the mean gain
of each round over the stage before it, the label-free / supervised test-EER
ratio and the demo's wall time. Runs under ``runs/bench_demo`` (kept: a rerun
reuses finished stages). About 7 minutes per seed on 2 cores.
``RAYSV_BENCH_DEMO_SEEDS=0,1`` runs fewer seeds (a partial table).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np

METRICS = ("dev.eer", "dev.min_dcf_0.01", "test.eer", "test.min_dcf_0.01", "nmi", "nmi_after")


def _flat(row: dict) -> dict:
    """``{"dev": {"eer": x}, "nmi": y}`` -> ``{"dev.eer": x, "nmi": y}``."""
    out = {}
    for key, v in row.items():
        if isinstance(v, dict):
            out.update({f"{key}.{m}": x for m, x in v.items()})
        else:
            out[key] = v
    return out


def aggregate(tables: list[dict]) -> dict:
    """Mean and range over seeds of each stage's metrics, and each round's gain.

    ``tables``: one ``demo.results_table`` per seed (stages in pipeline order).
    Returns ``{"stages": {stage: {metric: {mean, min, max, n}}}, "gains":
    {round: {metric: mean change against the previous stage}}, "ratio": ..}``;
    a gain is negative for an EER that fell and positive for an NMI that rose.
    """
    stages: dict = {}
    for table in tables:
        for stage, row in table.items():
            for metric, v in _flat(row).items():
                if metric in METRICS:
                    stages.setdefault(stage, {}).setdefault(metric, []).append(float(v))
    summary = {
        stage: {
            m: {
                "mean": float(np.mean(v)),
                "min": float(np.min(v)),
                "max": float(np.max(v)),
                "n": len(v),
            }
            for m, v in metrics.items()
        }
        for stage, metrics in stages.items()
    }
    gains: dict = {}
    order = [s for s in tables[0] if s == "stage1" or s.startswith("round")]
    for prev, cur in zip(order, order[1:], strict=False):
        gains[cur] = {}
        for m in ("dev.eer", "test.eer", "test.min_dcf_0.01"):
            diffs = [_flat(t[cur])[m] - _flat(t[prev])[m] for t in tables if cur in t]
            gains[cur][m] = float(np.mean(diffs))
        if cur != order[1]:  # NMI: this round's pseudo labels against the previous round's
            diffs = [t[cur]["nmi"] - t[prev]["nmi"] for t in tables if "nmi" in t.get(prev, {})]
            if diffs:
                gains[cur]["nmi"] = float(np.mean(diffs))
    ratios = [
        _flat(t[order[-1]])["test.eer"] / t["supervised_reference"]["test"]["eer"]
        for t in tables
        if "supervised_reference" in t
    ]
    return {
        "stages": summary,
        "gains": gains,
        "label_free_over_supervised_test_eer": float(np.mean(ratios)) if ratios else None,
    }


def quick_demo(cfg):
    """``cfg`` (a DemoConfig) shrunk to test the plumbing in minutes, not to measure:
    4 / 3 / 3 speakers x 8 utterances, 1 Stage I epoch, 1 round of 4 epochs (the
    gate closes at epoch 3: 1 head-only + 2 warm-up epochs)."""
    synth = replace(
        cfg.synth,
        train_speakers=4,
        dev_speakers=3,
        test_speakers=3,
        utts_per_speaker=8,
        trials_per_split=40,
    )
    pre, st2 = cfg.pretrain, cfg.stage2
    return replace(
        cfg,
        synth=synth,
        pretrain=replace(pre, train=replace(pre.train, epochs=1, batch_size=4)),
        stage2=replace(
            st2,
            rounds=1,
            train=replace(st2.train, train=replace(st2.train.train, epochs=4, batch_size=8)),
        ),
    )


def run(quick: bool = False) -> dict:
    from raysv.pipeline.demo import DemoConfig, run_demo

    seeds = [0] if quick else [0, 1, 2]
    if os.environ.get("RAYSV_BENCH_DEMO_SEEDS"):
        seeds = [int(v) for v in os.environ["RAYSV_BENCH_DEMO_SEEDS"].split(",")]
    root = os.path.abspath(os.path.join("runs", "bench_demo" + ("_quick" if quick else "")))
    rows = []
    for seed in seeds:
        base = DemoConfig()
        pre, st2 = base.pretrain, base.stage2
        cfg = replace(
            base,
            out=os.path.join(root, f"seed{seed}"),
            synth=replace(base.synth, seed=seed),
            pretrain=replace(pre, train=replace(pre.train, seed=seed)),
            stage2=replace(
                st2, train=replace(st2.train, train=replace(st2.train.train, seed=seed))
            ),
            report=False,
        )
        if quick:
            cfg = quick_demo(cfg)
        t0 = time.monotonic()
        s = run_demo(cfg)
        rounds = s.get("stage2", {}).get("rounds", [])
        rows.append(
            {
                "seed": seed,
                "results": s["results"],
                "k": [r["k"] for r in rounds],
                "kept_encoder": [r["round"] for r in rounds if r.get("train.best_epoch") == -1],
                "seconds": round(time.monotonic() - t0, 1),
                "demo_seconds": s["seconds"],
            }
        )
    return {
        "benchmark": "demo",
        "seeds": seeds,
        "rows": rows,
        **aggregate([r["results"] for r in rows]),
    }
