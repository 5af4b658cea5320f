"""Streaming at scale: manifests of 100k and 1M utterance rows (pointing into a pool
of real files) through the Stage I input path (Parquet shards -> Ray Data ->
featurisation -> batches); throughput and peak memory of the driver and of Ray's
worker processes. Each size runs in fresh processes; Linux /proc gives peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROWS_READ = 3000


def _ray_worker_peak_mb() -> float:
    """Largest peak RSS (VmHWM) among Ray worker processes, in MB."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="ignore")
            if "ray::" not in cmd and "default_worker.py" not in cmd:
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total = max(total, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return total


def _driver_peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


CHILD = r"""
import json, sys, time, threading
from raysv.bench.stream import _driver_peak_mb, _ray_worker_peak_mb, ROWS_READ
from raysv.runtime import ensure_ray
from raysv.training.data import InputSpec
from raysv.training.stream import build_dataset
ensure_ray(num_cpus=2)
ds = build_dataset(sys.argv[1], InputSpec("utterance", 1.0, 40, batch_rows=32))
it = ds.streaming_split(1, equal=True)[0].iter_torch_batches(batch_size=64, prefetch_batches=2)
worker_peak = [0.0]
stop = threading.Event()
def watch():
    while not stop.is_set():
        worker_peak[0] = max(worker_peak[0], _ray_worker_peak_mb())
        time.sleep(0.5)
threading.Thread(target=watch, daemon=True).start()
t0 = time.perf_counter(); first = None; n = 0
for b in it:
    first = first or time.perf_counter() - t0
    n += b["feats"].shape[0]
    if n >= ROWS_READ:
        break
secs = time.perf_counter() - t0
stop.set()
print(json.dumps({"rows_read": n, "seconds": secs, "first_batch_s": first, "rows_per_s": n / secs,
                  "driver_peak_mb": _driver_peak_mb(), "worker_peak_mb": max(worker_peak[0], _ray_worker_peak_mb())}))
"""


def _write_shards(folder: str, rows: int, pool: list[str]) -> float:
    import pyarrow as pa

    from raysv.training.data import utterance_table, write_shards

    t0 = time.perf_counter()
    idx = np.arange(rows) % len(pool)
    table = pa.table(
        {
            "utt_id": pa.array([f"u{i:08d}" for i in range(rows)]),
            "path": pa.array([pool[i] for i in idx]),
            "start_s": pa.nulls(rows, pa.float64()),
            "end_s": pa.nulls(rows, pa.float64()),
        }
    )
    write_shards(utterance_table(table), folder)
    return time.perf_counter() - t0


def run(quick: bool = False) -> dict:
    import soundfile as sf

    sizes = (10_000, 100_000) if quick else (100_000, 1_000_000)
    res: dict = {
        "benchmark": "stream",
        "pipeline": "Parquet shards -> Ray Data (2 CPUs) -> 2 x 1 s crops + 40 log-mel -> batches of 64",
        "rows_read_per_size": ROWS_READ,
    }
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        pool = []
        for i in range(200):
            p = os.path.join(d, f"pool{i:03d}.wav")
            sf.write(
                p,
                (rng.standard_normal(int(16000 * rng.uniform(2, 5))) * 0.1).astype(np.float32),
                16000,
            )
            pool.append(p)
        for rows in sizes:
            folder = os.path.join(d, f"shards_{rows}")
            res[f"rows{rows}_prepare_s"] = round(_write_shards(folder, rows, pool), 1)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, folder], capture_output=True, text=True, timeout=1200
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-3000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            for k in ("rows_per_s", "first_batch_s", "driver_peak_mb", "worker_peak_mb"):
                res[f"rows{rows}_{k}"] = round(r[k], 1)
    a, b = sizes
    res["driver_peak_ratio_10x_rows"] = round(
        res[f"rows{b}_driver_peak_mb"] / res[f"rows{a}_driver_peak_mb"], 3
    )
    res["worker_peak_ratio_10x_rows"] = round(
        res[f"rows{b}_worker_peak_mb"] / res[f"rows{a}_worker_peak_mb"], 3
    )
    return res
