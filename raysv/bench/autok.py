"""Automatic k against the true speaker count: the demo pipeline on generated
corpora (40 training speakers, seeds 0-2), once with ``k: [auto]`` (the demo's
default) and once more from the same Stage I encoder with k = the number of
training speakers (which only a generated corpus knows). Reports, per seed,
the k chosen in each round, the test EER and NMI after the rounds for both,
and the spread over seeds. Runs under ``runs/bench_autok`` (kept: a rerun
reuses finished stages).

Other corpus sizes: ``RAYSV_BENCH_AUTOK_SPEAKERS=100`` (and
``RAYSV_BENCH_AUTOK_SEEDS=0,1``) write ``autok_spk100.json``; tens of minutes
per seed on 2 cores. ``RAYSV_BENCH_AUTOK_GPU=1`` trains Stage I and II on a
CUDA GPU (same settings otherwise; the file name gains ``_gpu``).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np


def _last_round(st2: dict) -> dict:
    last = st2["rounds"][-1]
    final = st2.get("final_clustering", {}).get("analysis", {}).get("all", {})
    return {
        "k": [r["k"] for r in st2["rounds"]],
        "test_eer": last["test.eer"],
        "dev_eer": last["dev.eer"],
        "nmi": [r.get("all.nmi") for r in st2["rounds"]],
        "nmi_after": final.get("nmi"),
    }


def run(quick: bool = False) -> dict:
    from raysv.bench.demo import quick_demo
    from raysv.pipeline.demo import DemoConfig, run_demo
    from raysv.pipeline.iterate import run_iterate

    speakers = int(os.environ.get("RAYSV_BENCH_AUTOK_SPEAKERS", "40"))
    seeds = [0] if quick else [0, 1, 2]
    if os.environ.get("RAYSV_BENCH_AUTOK_SEEDS"):  # e.g. "0,1": fewer seeds, a partial table
        seeds = [int(v) for v in os.environ["RAYSV_BENCH_AUTOK_SEEDS"].split(",")]
    gpu = os.environ.get("RAYSV_BENCH_AUTOK_GPU") == "1"
    root = os.path.abspath(
        os.path.join("runs", "bench_autok" + ("_quick" if quick else "") + ("_gpu" if gpu else ""))
    )
    rows = []
    for seed in seeds:
        base = DemoConfig()
        synth = replace(base.synth, train_speakers=speakers, seed=seed)
        if quick:  # the pipeline's plumbing in a few minutes, not a measurement
            speakers = 4
            base = quick_demo(base)
            synth = replace(base.synth, seed=seed)
        if gpu:  # the same settings, trained on the GPU
            base = replace(
                base,
                pretrain=replace(base.pretrain, train=replace(base.pretrain.train, use_gpu=True)),
                stage2=replace(
                    base.stage2,
                    train=replace(
                        base.stage2.train,
                        train=replace(base.stage2.train.train, use_gpu=True),
                    ),
                ),
            )
        out = os.path.join(root, f"spk{speakers}_seed{seed}")
        stage2 = replace(base.stage2, reference=False)
        cfg = replace(base, out=out, synth=synth, stage2=stage2, report=False)
        t0 = time.monotonic()
        auto = run_demo(cfg)
        t_auto = time.monotonic() - t0
        true_cfg = replace(
            auto_cfg := cfg.stage2,
            out=os.path.join(out, "stage2_true_k"),
            data=os.path.join(out, "corpus"),
            init_checkpoint=auto["stage1"]["best_model"],
            schedule=replace(auto_cfg.schedule, k=[speakers]),
            tracking_uri=auto["mlflow"]["tracking_uri"],
            experiment=cfg.experiment,
        )
        t1 = time.monotonic()
        true = run_iterate(true_cfg)
        rows.append(
            {
                "seed": seed,
                "stage1_test_eer": auto["results"]["stage1"]["test"]["eer"],
                "auto": _last_round(auto["stage2"]),
                "true_k": _last_round(true),
                "seconds": {
                    "demo_auto": round(t_auto, 1),
                    "iterate_true_k": round(time.monotonic() - t1, 1),
                },
            }
        )

    def spread(key: str, which: str) -> dict:
        v = np.array([r[which][key] for r in rows], dtype=float)
        return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}

    return {
        "benchmark": "autok",
        "file_suffix": ("" if speakers == 40 else f"_spk{speakers}") + ("_gpu" if gpu else ""),
        "device": "cuda" if gpu else "cpu",
        "training_speakers": speakers,
        "rows": rows,
        "test_eer": {"auto": spread("test_eer", "auto"), "true_k": spread("test_eer", "true_k")},
        "nmi_after": {
            "auto": spread("nmi_after", "auto"),
            "true_k": spread("nmi_after", "true_k"),
        },
    }
