"""Exported-encoder throughput: ONNX Runtime vs PyTorch eager vs TorchScript, on CPU.

All three run the same waveform model (the exported graph: fbank front-end +
ECAPA-TDNN C = 256, 192-d, 40 mel bins as ``raysv bench embed``'s checkpoint),
random weights, on the same in-memory utterances (2-8 s, in 0.1 s steps as the
length policy leaves them), equal lengths batched together (at most 32), at 1
and 2 threads. Each engine and thread count gets one untimed pass over all the
lengths first (TorchScript's profiling executor specialises on the first calls
of each shape; that first pass is reported too), then timed passes in rounds
with the engines interleaved (this shared machine's speed drifts), medians
reported, and each engine's speed against eager as the median per-round ratio.
Embeddings of the three agree to the parity tolerance (checked here as well).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np


def _waves(n: int, seed: int = 0, low: float = 2.0, high: float = 8.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = (np.round(rng.uniform(low, high, n), 1) * 16000).astype(int)
    return [(rng.standard_normal(t) * 0.1).astype(np.float32) for t in lengths]


def _engines(folder: str, model, threads: int) -> dict:
    import onnxruntime as ort
    import torch

    from raysv.export.runtime import torch_forward

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(
        os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    return {
        "onnxruntime": lambda x: sess.run(None, {"wave": x})[0],
        "torch_eager": torch_forward(model),
        "torchscript": torch_forward(torch.jit.load(os.path.join(folder, "model.ts"))),
    }


def run(quick: bool = False) -> dict:
    import torch

    from raysv.evaluation.scoring import l2_normalise
    from raysv.export.bundle import export_model
    from raysv.export.frontend import build_wave_encoder
    from raysv.export.runtime import embed_waves
    from raysv.models import build_encoder
    from raysv.models.checkpoint import encoder_spec, load_encoder, save_encoder

    channels, dim, n, rounds = (16, 8, 6, 1) if quick else (256, 192, 120, 3)
    kwargs = {"channels": channels, "embed_dim": dim}
    waves = _waves(n, high=2.5 if quick else 8.0)
    audio_s = sum(w.shape[0] for w in waves) / 16000
    result: dict = {
        "model": f"ecapa C={channels} D={dim}, 40 mel bins, random weights",
        "utterances": n,
        "audio_seconds": round(audio_s, 1),
        "lengths": len({w.shape[0] for w in waves}),
        "runs": {},
    }
    prev_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        enc = build_encoder("ecapa", 40, **kwargs)
        ckpt = save_encoder(
            os.path.join(tmp, "best_model.pt"), enc.state_dict(), encoder_spec("ecapa", 40, kwargs)
        )
        export_model(ckpt, os.path.join(tmp, "model"))
        encoder, _ = load_encoder(ckpt)
        model = build_wave_encoder(encoder.eval(), 40)
        embs = {}
        result["load_average_before"] = list(os.getloadavg())
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                engines = _engines(os.path.join(tmp, "model"), model, threads)
                times: dict = {name: [] for name in engines}
                for name, fwd in engines.items():
                    t0 = time.perf_counter()
                    embed_waves(fwd, waves)  # first pass: every shape once
                    times[name].append(time.perf_counter() - t0)
                for _ in range(rounds):  # engines interleaved: drift hits all alike
                    for name, fwd in engines.items():
                        t0 = time.perf_counter()
                        embs[name] = embed_waves(fwd, waves)
                        times[name].append(time.perf_counter() - t0)
                for name, ts in times.items():
                    secs = float(np.median(ts[1:]))
                    result["runs"][f"{name}@{threads}"] = {
                        "utts_per_s": round(n / secs, 1),
                        "first_pass_utts_per_s": round(n / ts[0], 1),
                        "audio_x_realtime": round(audio_s / secs, 1),
                        "seconds_per_round": [round(t, 2) for t in ts[1:]],
                    }
                for name in ("onnxruntime", "torchscript"):  # per-round ratios, median
                    ratios = [
                        e / t
                        for e, t in zip(times["torch_eager"][1:], times[name][1:], strict=True)
                    ]
                    result["runs"][f"{name}@{threads}"]["ratio_vs_eager"] = round(
                        float(np.median(ratios)), 2
                    )
        finally:
            torch.set_num_threads(prev_threads)
        result["load_average_after"] = list(os.getloadavg())
    ref = l2_normalise(embs["torch_eager"])
    result["max_abs_diff_vs_eager"] = {
        k: float(np.abs(l2_normalise(v) - ref).max()) for k, v in embs.items() if k != "torch_eager"
    }
    lines = [
        f"{k}: {v['utts_per_s']} utt/s ({v['audio_x_realtime']}x real time; first pass "
        f"{v['first_pass_utts_per_s']} utt/s)"
        for k, v in result["runs"].items()
    ]
    print("\n".join(lines))
    return result
