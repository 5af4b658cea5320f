"""The Stage I input path alone: how many crops/s Ray Data featurises with every core.

A worker waits for data when this rate is below what its step consumes. Same
path as training (Parquet shards -> Ray Data -> decode, crop, augment, fbank
-> ``streaming_split`` -> ``iter_torch_batches``), no model. Per variant, two
epochs read from one execution of the pipeline, as training reads them (the
second has no start-up in it). The baseline is the same
featurisation in this process, one thread: the ideal rate on ``c`` free CPUs
is ``c`` times it, and the ratio says how much of the machine Ray Data uses.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

BATCH = 64  # dialogues per batch, 2 utterances each


def _one_thread_rate(table, crop_seconds: float, augment) -> float:
    """Crops/s of ``featurise_dialogues`` in this process (one thread)."""
    import torch

    from raysv.training.data import featurise_dialogues

    torch.set_num_threads(1)
    rows = table.slice(0, min(64, table.num_rows)).to_pydict()
    batch = {k: np.asarray(v, dtype=object) for k, v in rows.items()}
    featurise_dialogues(batch, 2, crop_seconds, 40, augment)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    out = featurise_dialogues(batch, 2, crop_seconds, 40, augment)
    return out["feats"].shape[0] * 2 / (time.perf_counter() - t0)


def _epochs(
    shards: str,
    rows: int,
    crop_seconds: float,
    augment,
    task_cpus: float,
    batch: int,
    ledger=None,
) -> list[dict]:
    """Two epochs from ONE execution of the pipeline, cut by step count, as training reads it.

    ``ledger``: count rows read and skipped, as training does (one actor call per
    featurisation batch; :mod:`raysv.training.unreadable`).
    """
    from raysv.training.data import InputSpec, steps_per_epoch
    from raysv.training.stream import EpochStream, build_dataset

    spec = InputSpec(
        "dialogue", crop_seconds, 40, augment, utts_per_dialogue=2, task_cpus=task_cpus, epochs=2
    )
    ds = build_dataset(shards, spec, ledger)
    stream = EpochStream(
        ds.streaming_split(1, equal=True)[0],
        steps_per_epoch(rows, 1, batch),
        batch_size=batch,
        prefetch_batches=2,
        drop_last=True,
    )
    res = []
    for _ in range(2):
        t0 = time.perf_counter()
        first, n = None, 0
        for b in stream.epoch():
            n += b["feats"].shape[0] * b["feats"].shape[1]
            first = first if first is not None else time.perf_counter() - t0
        secs = time.perf_counter() - t0
        res.append(
            {
                "seconds": round(secs, 2),
                "first_batch_s": round(first or 0, 2),
                "crops_per_s": round(n / secs, 1),
            }
        )
    return res


def _ledger_call_seconds(ledger, calls: int = 2000) -> float:
    """Seconds one featurisation task spends counting a clean batch (a fire-and-forget
    ``ledger.add``), from a Ray task as in training; the counts are added afterwards."""
    from raysv.training import unreadable

    t0 = time.perf_counter()
    for _ in range(calls):
        unreadable.record(ledger, 0, [])
    return (time.perf_counter() - t0) / calls


def run(quick: bool = False) -> dict:
    import ray

    from raysv.audio.augment import AugmentConfig
    from raysv.config import from_dict
    from raysv.runtime import ensure_ray
    from raysv.synth.corpus import SynthConfig, synthesize
    from raysv.training import data as tdata
    from raysv.training import unreadable
    from raysv.training.config import PretrainConfig
    from raysv.training.pretrain import prepare_inputs

    crop = 2.0
    with tempfile.TemporaryDirectory() as d:
        synth = SynthConfig(
            train_speakers=24 if quick else 120,
            dev_speakers=2,
            test_speakers=2,
            utts_per_speaker=8 if quick else 16,
            trials_per_split=10,
        )
        synthesize(synth, f"{d}/corpus")
        cfg = from_dict(
            PretrainConfig,
            {
                "data": {"data": f"{d}/corpus", "crop_seconds": crop},
                "out": f"{d}/run",
                "train": {"batch_size": 4},
            },
        )
        table = prepare_inputs(cfg)["table"]
        shards = tdata.write_shards(table, f"{d}/shards")
        ensure_ray()
        cpus = float(ray.cluster_resources().get("CPU", 1))
        res: dict = {
            "benchmark": "input",
            "dialogues": table.num_rows,
            "crop_seconds": crop,
            "cpus": cpus,
        }
        for name, aug, task_cpus, counted in (
            ("augment", AugmentConfig(prob=0.5), 1.0, False),
            ("augment_counted", AugmentConfig(prob=0.5), 1.0, True),
            ("no_augment", AugmentConfig(prob=0.0), 1.0, False),
            ("augment_half_cpu_tasks", AugmentConfig(prob=0.5), 0.5, False),
        ):
            one = _one_thread_rate(table, crop, aug)
            # counted: the unreadable-rows ledger training uses (one actor call per batch)
            ledger = unreadable.start_ledger(0.05) if counted else None
            ep = _epochs(
                shards,
                table.num_rows,
                crop,
                aug,
                task_cpus,
                min(BATCH, table.num_rows // 2),
                ledger,
            )
            if counted:
                res[f"{name}_rows_counted"] = unreadable.snapshot(ledger)["read"]
                res["ledger_call_us"] = round(
                    ray.get(ray.remote(_ledger_call_seconds).remote(ledger)) * 1e6, 1
                )
                ray.kill(ledger)
            res[f"{name}_one_thread_crops_per_s"] = round(one, 1)
            res[f"{name}_epochs"] = ep
            res[f"{name}_share_of_ideal"] = round(ep[-1]["crops_per_s"] / (one * cpus), 3)
    return res
