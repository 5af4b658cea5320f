"""Featurisation throughput: raysv's chain vs. the same steps in a bare loop, one core.

Both run decode -> mono -> resample to 16 kHz -> 2 s crop -> 80-bin log-mel
with mean normalisation over the same files (44.1 kHz stereo, 6-10 s, so
resampling and mix-down are exercised). Each variant runs in a fresh
process pinned to one thread, which also gives its own peak RSS.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time

import numpy as np
import soundfile as sf

CROP_S = 2.0


def _make_files(folder: str, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        sr = 44100
        x = rng.standard_normal((int(sr * rng.uniform(6, 10)), 2)).astype(np.float32) * 0.1
        p = os.path.join(folder, f"{i:04d}.wav")
        sf.write(p, x, sr, subtype="PCM_16")
        paths.append(p)
    return paths


def _bare(paths: list[str], reps: int) -> int:
    import torch
    import torchaudio.functional as AF
    from torchaudio.compliance import kaldi

    rng = np.random.default_rng(1)
    n = 0
    for _ in range(reps):
        for p in paths:
            x, sr = sf.read(p, dtype="float32", always_2d=True)
            w = torch.from_numpy(x.mean(axis=1))
            w = AF.resample(w, sr, 16000)
            need = int(CROP_S * 16000)
            off = int(rng.integers(0, w.shape[0] - need + 1))
            w = w[off : off + need]
            f = kaldi.fbank(w.unsqueeze(0) * 32768, num_mel_bins=80, dither=0.0, energy_floor=0.0)
            f = f - f.mean(0, keepdim=True)
            n += 1
    return n


def _raysv(paths: list[str], reps: int) -> int:
    from raysv.audio.pipeline import load_features

    rng = np.random.default_rng(1)
    n = 0
    for _ in range(reps):
        for p in paths:
            load_features(p, CROP_S, rng, n_mels=80)
            n += 1
    return n


def _child(kind: str, paths: list[str], reps: int, q) -> None:
    import torch

    torch.set_num_threads(1)
    fn = _bare if kind == "bare" else _raysv
    fn(paths[:2], 1)  # warm-up: imports, resampling kernels
    t0 = time.perf_counter()
    n = fn(paths, reps)
    secs = time.perf_counter() - t0
    q.put(
        {
            "utts_per_s": n / secs,
            "seconds": secs,
            "n": n,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def _measure(kind: str, paths: list[str], reps: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(kind, paths, reps, q))
    p.start()
    res = q.get()
    p.join()
    return res


def run(quick: bool = False) -> dict:
    n_files, reps = (8, 1) if quick else (60, 3)
    with tempfile.TemporaryDirectory() as d:
        paths = _make_files(d, n_files)
        bare = _measure("bare", paths, reps)
        ours = _measure("raysv", paths, reps)
    return {
        "benchmark": "featurize",
        "what": "decode 44.1 kHz stereo WAV (6-10 s) -> mono -> 16 kHz -> 2 s crop -> 80 log-mel + CMN, 1 thread",
        "bare_loop_utts_per_s": round(bare["utts_per_s"], 1),
        "raysv_utts_per_s": round(ours["utts_per_s"], 1),
        "ratio_raysv_over_bare": round(ours["utts_per_s"] / bare["utts_per_s"], 3),
        "bare_peak_rss_mb": round(bare["peak_rss_mb"], 1),
        "raysv_peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "utterances": ours["n"],
    }
