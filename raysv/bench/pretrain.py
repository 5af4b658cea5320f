"""Stage I throughput: Ray Train step time vs. a plain PyTorch loop, data wait share,
and samples/s with 1 and 2 workers, on the same model, batch and machine.

The plain loop runs the same encoder + AvA + rejection + Adam step on random
features already in memory, one thread: the pure compute cost of a step.
Ray Train's ``step_seconds`` is measured inside the worker around the same
operations (excluding time spent waiting for data), so their ratio is Ray
Train's (and DDP's) overhead. ``data_wait_share`` is the share of an epoch a
worker waited for its next batch.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np


def plain_step_seconds(cfg, steps: int = 8) -> float:
    import torch

    from raysv.audio.features import num_frames
    from raysv.training.pretrain_worker import build_modules

    torch.set_num_threads(1)
    encoder, loss_fn, rejection = build_modules(cfg)
    params = (
        list(encoder.parameters())
        + list(loss_fn.parameters())
        + (list(rejection.parameters()) if rejection else [])
    )
    opt = torch.optim.Adam(params, lr=cfg.optim.lr)
    b, g = cfg.train.batch_size, cfg.group_size
    frames = num_frames(int(cfg.data.crop_seconds * 16000))
    x = torch.randn(b, g, frames, cfg.data.n_mels)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        emb = encoder(x.reshape(b * g, frames, -1)).reshape(b, g, -1)
        per = loss_fn(emb)
        loss = rejection(per, emb)[0] if rejection else per.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(quick: bool = False) -> dict:
    from raysv.config import from_dict
    from raysv.synth.corpus import SynthConfig, synthesize
    from raysv.training.config import PretrainConfig
    from raysv.training.pretrain import run_pretrain

    with tempfile.TemporaryDirectory() as d:
        synth = (
            SynthConfig(
                train_speakers=6,
                dev_speakers=2,
                test_speakers=2,
                utts_per_speaker=6,
                trials_per_split=20,
            )
            if quick
            else SynthConfig()
        )
        synthesize(synth, f"{d}/corpus")
        base = {
            "data": {
                "data": f"{d}/corpus",
                "crop_seconds": 1.0 if quick else 2.0,
                "augment": {"prob": 0.5},
            },
            "model": {
                "name": "ecapa",
                "kwargs": {"channels": 16 if quick else 64, "embed_dim": 32 if quick else 128},
            },
            "train": {"epochs": 2, "batch_size": 4 if quick else 32},
        }
        res: dict = {
            "benchmark": "pretrain",
            "model": f"ecapa {base['model']['kwargs']}",
            "batch": f"{base['train']['batch_size']} dialogues x 2 utterances x {base['data']['crop_seconds']} s",
        }
        cfg1 = from_dict(
            PretrainConfig, {**base, "out": f"{d}/w1", "train": {**base["train"], "num_workers": 1}}
        )
        res["plain_step_s"] = round(plain_step_seconds(cfg1), 4)
        for workers in (1, 2):
            cfg = from_dict(
                PretrainConfig,
                {
                    **base,
                    "out": f"{d}/w{workers}",
                    "train": {**base["train"], "num_workers": workers},
                },
            )
            h = run_pretrain(cfg)["history"][-1]  # the second epoch: no start-up in it
            res[f"workers{workers}_step_s"] = round(h["step_seconds"], 4)
            res[f"workers{workers}_samples_per_s"] = round(h["samples_per_s"], 1)
            res[f"workers{workers}_data_wait_share"] = round(h["data_wait_share"], 3)
        res["overhead_ratio_1_worker"] = round(res["workers1_step_s"] / res["plain_step_s"], 3)
    return res
