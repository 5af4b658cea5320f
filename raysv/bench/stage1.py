"""Stage I objectives at an equal wall-clock budget (issue #21's evidence).

On one generated corpus (the demo's generator with 100 training speakers, 25 dev
and 25 test speakers by default), the same small ECAPA-TDNN and batch (the
demo's Stage I: C = 48, 96-d, 1.5 s crops, 16 items a step, Adam at 0.002) is
trained by four objectives, 3 seeds each, each for the same minutes of
training (``train.max_minutes``; dev scoring and checkpoints are not counted):

- ``ava_rejection``: AvA on dialogues with soft rejection (the demo's Stage I);
- ``simclr``: NT-Xent on two segments of an utterance (temperature 0.1);
- ``dino``: DINO on crops of an utterance;
- ``dino_dialogue``: DINO with global views from two utterances of a dialogue and
  rejection per dialogue.

DINO's head and crops are the demo's CPU sizes (``raysv.pipeline.demo``); its
teacher momentum starts at 0.99 here instead of the recipe's 0.996, because a
budget of minutes is a few hundred steps, in which a 0.996 teacher barely leaves
its initialisation (docs/stage1.md). Each objective's ``train.epochs`` is what
its budget fits, measured by the second epoch of a two-epoch probe (x 1.2, so that the budget, not
the epoch count, ends the run), so that schedules span the run.

Reported per run: test and dev EER of the encoder with the best dev EER (the
test EER is reported, never used to choose), epochs, steps, training seconds
and the mean step time (so DINO's step time against AvA's on the same encoder
and batch). The objective with the lowest mean dev EER is then taken through the
demo's two Stage II rounds from its best-dev seed. Runs under
``runs/bench_stage1/<setting>`` (a rerun of the same setting reuses finished runs).

``RAYSV_BENCH_STAGE1_MINUTES`` (default 2), ``RAYSV_BENCH_STAGE1_SPEAKERS``
(100), ``RAYSV_BENCH_STAGE1_SEEDS`` ("0,1,2"), ``RAYSV_BENCH_STAGE1_METHODS``
(comma list) change the setting.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import replace

import numpy as np

log = logging.getLogger("raysv")

METHODS = ("ava_rejection", "simclr", "dino", "dino_dialogue")


def method_config(base, name: str):
    """The demo's Stage I config ``base`` (a PretrainConfig) set up for objective ``name``."""
    from raysv.training.config import LossSpec, RejectionSpec

    if name == "ava_rejection":
        mode, loss = "dialogue", LossSpec(name="ava", rejection=RejectionSpec(enabled=True))
    elif name == "simclr":
        mode, loss = "utterance", LossSpec(name="ntxent", temperature=0.1)
    elif name == "dino":
        mode, loss = "utterance", LossSpec(name="dino")
    elif name == "dino_dialogue":
        mode, loss = "dialogue", LossSpec(name="dino", rejection=RejectionSpec(enabled=True))
    else:
        raise ValueError(f"unknown Stage I method {name!r}; known: {', '.join(METHODS)}")
    return replace(
        base,
        run_name=name,
        data=replace(base.data, mode=mode),
        loss=loss,
        dino=replace(base.dino, teacher_momentum=0.99),
    )


def epochs_for(minutes: float, epoch_seconds: float, slack: float = 1.2) -> int:
    """Epochs that a budget of ``minutes`` fits at ``epoch_seconds`` each, times ``slack``
    (the budget, not the epoch count, should end the run); at least 1."""
    return max(1, math.ceil(slack * 60.0 * minutes / max(epoch_seconds, 1e-9)))


def _pretrain(cfg) -> dict:
    """``run_pretrain(cfg)``, or the summary of the finished run in ``cfg.out``."""
    from raysv.data.outputs import read_json
    from raysv.training.pretrain import run_pretrain
    from raysv.training.worker import TrainingStopped

    done = os.path.join(cfg.out, "summary.json")
    if os.path.isfile(done):
        return read_json(done)
    try:
        return run_pretrain(cfg)
    except TrainingStopped as exc:  # e.g. DINO's collapse: its summary says why
        log.warning("bench stage1: %s", exc)
        return read_json(done)


def _row(name: str, seed: int, s: dict, batch: int) -> dict:
    steps = [e["step_seconds"] for e in s["history"] if "step_seconds" in e]
    return {
        "method": name,
        "seed": seed,
        "test_eer": s["final"]["best.test.eer"],
        "dev_eer": s["final"]["best.dev.eer"],
        "untrained_test_eer": s["final"]["untrained.test.eer"],
        "epochs": s["epochs"],
        "steps": s["steps"],
        "train_seconds": s.get("train_seconds"),
        "out_of_time": bool(s.get("out_of_time")),
        "stopped": s.get("stopped"),  # an objective's early stop (DINO's collapse)
        "step_seconds": float(np.mean(steps)) if steps else None,
        "item_seconds": float(np.mean(steps)) / batch if steps else None,
        "best_model": s["best_model"],
    }


def _spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def run(quick: bool = False) -> dict:
    from raysv.bench.demo import quick_demo
    from raysv.pipeline.demo import DemoConfig
    from raysv.pipeline.iterate import run_iterate
    from raysv.synth.corpus import synthesize_replacing

    env = os.environ.get
    minutes = float(env("RAYSV_BENCH_STAGE1_MINUTES", "0.05" if quick else "2"))
    speakers = int(env("RAYSV_BENCH_STAGE1_SPEAKERS", "100"))
    seeds = [int(v) for v in env("RAYSV_BENCH_STAGE1_SEEDS", "0" if quick else "0,1,2").split(",")]
    methods = env("RAYSV_BENCH_STAGE1_METHODS", ",".join(METHODS)).split(",")
    base = DemoConfig()
    synth = replace(base.synth, train_speakers=speakers, seed=0)
    if quick:  # the plumbing in a few minutes, not a measurement
        base = quick_demo(base)
        synth = replace(base.synth, seed=0)
    # one folder per setting: a rerun reuses finished runs of the same setting only
    setting = "quick" if quick else f"spk{speakers}_{minutes:g}min"
    root = os.path.abspath(os.path.join("runs", "bench_stage1", setting))
    corpus = os.path.join(root, "corpus")
    if not os.path.isfile(os.path.join(corpus, "meta", "synth.yaml")):
        synthesize_replacing(synth, corpus)
    rows, probes = [], {}
    for name in methods:
        cfg = method_config(base.pretrain, name)
        cfg = replace(cfg, data=replace(cfg.data, data=corpus))
        probe = _pretrain(
            replace(
                cfg, out=os.path.join(root, f"{name}_probe"), train=replace(cfg.train, epochs=2)
            )
        )
        # the second epoch's time: the first one's includes starting the input pipeline
        t = [e["train_seconds"] for e in probe["history"]]
        per_epoch = t[1] - t[0]
        epochs = epochs_for(minutes, per_epoch)
        probes[name] = {"epoch_seconds": round(per_epoch, 2), "epochs": epochs}
        log.info(
            "bench stage1: %s: %.1f s an epoch -> %d epochs in %g min",
            name,
            per_epoch,
            epochs,
            minutes,
        )
        for seed in seeds:
            t0 = time.monotonic()
            s = _pretrain(
                replace(
                    cfg,
                    out=os.path.join(root, f"{name}_seed{seed}"),
                    train=replace(cfg.train, seed=seed, epochs=epochs, max_minutes=minutes),
                )
            )
            row = _row(name, seed, s, cfg.train.batch_size)
            row["wall_seconds"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            log.info(
                "bench stage1: %s seed %d: test EER %.2f, dev EER %.2f, %d epochs in %.0f s",
                name, seed, row["test_eer"], row["dev_eer"], row["epochs"], row["train_seconds"] or 0,
            )  # fmt: skip
    summary = {}
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        summary[name] = {
            "test_eer": _spread([r["test_eer"] for r in mine]),
            "dev_eer": _spread([r["dev_eer"] for r in mine]),
            "step_seconds": float(np.mean([r["step_seconds"] for r in mine])),
            "steps": _spread([r["steps"] for r in mine]),
        }
    # chosen by dev EER only: the objective with the lowest mean, its seed with the lowest
    # (a run its objective stopped, e.g. a collapsed DINO, is not a candidate)
    ok = [r for r in rows if not r["stopped"]]
    best = min({r["method"] for r in ok}, key=lambda m: summary[m]["dev_eer"]["mean"])
    seed_row = min((r for r in ok if r["method"] == best), key=lambda r: r["dev_eer"])
    st2 = replace(base.stage2, reference=False)
    t0 = time.monotonic()
    it = run_iterate(
        replace(
            st2,
            out=os.path.join(root, f"stage2_from_{best}_seed{seed_row['seed']}"),
            data=corpus,
            init_checkpoint=seed_row["best_model"],
        )
    )
    rounds = [
        {"round": i + 1, "k": r["k"], "test_eer": r["test.eer"], "dev_eer": r["dev.eer"]}
        for i, r in enumerate(it["rounds"])
    ]
    ava = summary.get("ava_rejection", {}).get("step_seconds")
    return {
        "benchmark": "stage1",
        "training_speakers": synth.train_speakers,
        "minutes_per_run": minutes,
        "seeds": seeds,
        "probes": probes,
        "rows": rows,
        "summary": summary,
        "step_time_vs_ava": {m: round(summary[m]["step_seconds"] / ava, 2) for m in methods if ava},
        "best_by_dev": best,
        "stage2": {
            "from": f"{best} seed {seed_row['seed']}",
            "stage1_test_eer": seed_row["test_eer"],
            "stage1_dev_eer": seed_row["dev_eer"],
            "rounds": rounds,
            "seconds": round(time.monotonic() - t0, 1),
        },
    }
