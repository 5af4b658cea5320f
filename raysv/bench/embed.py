"""Embedding throughput: ``raysv embed`` (Ray Data + TorchEmbedder) vs. a bare batched loop.

Same machine, same model (a small ECAPA-TDNN checkpoint made on the fly, in
the ``best_model.pt`` format of ``raysv pretrain``), same utterances (a
generated corpus), same work per utterance: decode -> centre cut to a 0.5 s
bucket (at most 10 s) -> 40-bin log-mel -> forward. The bare loop runs in this
process with torch using every core; it groups all utterances by length up
front and forwards batches of up to 32 equal-length inputs (the best case for
batching), then writes one Parquet file. ``raysv embed`` is timed end to end
(manifest read, actor start-up and model load, embedding, Parquet write) on an
already started local Ray whose workers run at the bare loop's priority
(``RAY_worker_niceness=0``; Ray's default is nice 15). Both outputs are
compared row by row. Where torch sees a GPU, both forward on it (the actors
share it; decoding and features stay on CPU).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

BATCH = 32


def _checkpoint(corpus: str, path: str, channels: int, embed_dim: int) -> str:
    """A randomly initialised ECAPA encoder saved as ``{"model": state_dict, "config": ...}``."""
    import torch

    from raysv.config import from_dict, to_dict
    from raysv.models import build_encoder
    from raysv.training.config import PretrainConfig

    cfg = from_dict(
        PretrainConfig,
        {
            "data": {"data": corpus, "n_mels": 40},
            "model": {"name": "ecapa", "kwargs": {"channels": channels, "embed_dim": embed_dim}},
        },
    )
    torch.manual_seed(0)
    enc = build_encoder(cfg.model.name, cfg.data.n_mels, **cfg.model.kwargs)
    torch.save({"model": enc.state_dict(), "config": to_dict(cfg)}, path)
    return path


def bare_loop(manifest: str, checkpoint: str, out: str, threads: int) -> dict:
    """Embed every manifest row in this process: ``{utt_id: embedding (D,) float32}`` plus timing."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from raysv.audio import features, io
    from raysv.config import from_dict
    from raysv.embedding.torch_embedder import bucket_length
    from raysv.models import build_encoder
    from raysv.training.config import PretrainConfig

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = from_dict(PretrainConfig, blob["config"])
    model = build_encoder(cfg.model.name, cfg.data.n_mels, **cfg.model.kwargs)
    model.load_state_dict(blob["model"])
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as TorchEmbedder chooses
    model.to(device).eval()
    rows = pq.read_table(manifest, columns=["utt_id", "path", "start_s", "end_s"]).to_pylist()
    cap, bucket = int(10.0 * io.TARGET_SR), int(0.5 * io.TARGET_SR)
    by_len: dict[int, list[tuple[str, np.ndarray]]] = {}
    for r in rows:
        st, en = io.bound(r["start_s"]), io.bound(r["end_s"])
        wave = io.read_crop(r["path"], cap / io.TARGET_SR, None, st, en)
        wave = features.crop(wave, bucket_length(wave.shape[0], bucket, cap))
        fb = features.fbank(wave, n_mels=cfg.data.n_mels)
        by_len.setdefault(fb.shape[0], []).append((r["utt_id"], fb))
    ids, embs = [], []
    with torch.no_grad():
        for group in by_len.values():
            for i in range(0, len(group), BATCH):
                chunk = group[i : i + BATCH]
                x = torch.from_numpy(np.stack([f for _, f in chunk])).to(device)
                embs.append(model(x).float().cpu().numpy())
                ids += [u for u, _ in chunk]
    emb = np.concatenate(embs).astype(np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
    pq.write_table(pa.table({"utt_id": ids, "embedding": col}), out)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "rows": len(ids), "emb": dict(zip(ids, emb, strict=True))}


def run(quick: bool = False) -> dict:
    import pyarrow.parquet as pq
    import torch

    from raysv.data.corpus import prepare_corpus
    from raysv.embedding.extract import embed_manifest
    from raysv.embedding.torch_embedder import TorchEmbedder
    from raysv.evaluation.scoring import embedding_matrix
    from raysv.runtime import ensure_ray
    from raysv.synth.corpus import SynthConfig, synthesize

    cpus = os.cpu_count() or 1
    # On a GPU the 1600-utterance corpus embeds in seconds, less than the actors
    # take to start: 5x more utterances there, so the figure is the steady state.
    scale = 5 if torch.cuda.is_available() else 1
    synth = (
        SynthConfig(
            train_speakers=4,
            dev_speakers=2,
            test_speakers=2,
            utts_per_speaker=4,
            trials_per_split=10,
            min_seconds=1.0,
            max_seconds=2.0,
        )
        if quick
        else SynthConfig(
            train_speakers=60 * scale,
            dev_speakers=10 * scale,
            test_speakers=10 * scale,
            utts_per_speaker=20,
        )
    )
    channels, dim = (16, 8) if quick else (256, 192)
    with tempfile.TemporaryDirectory() as d:
        synthesize(synth, f"{d}/corpus")
        man, _ = prepare_corpus(f"{d}/corpus", f"{d}/manifests")
        ckpt = _checkpoint(f"{d}/corpus", f"{d}/best_model.pt", channels, dim)
        bare = bare_loop(man.utterances, ckpt, f"{d}/bare.parquet", threads=cpus)
        # Ray runs its workers at nice 15 by default; the bare loop runs at 0. On a
        # shared machine that alone skews the ratio, so both run at the same priority.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ensure_ray(num_cpus=cpus)  # started before timing: the same Ray serves every job
        t0 = time.perf_counter()
        ours = embed_manifest(
            man.utterances, f"{d}/emb", TorchEmbedder, {"checkpoint": ckpt}, force=True
        )
        ray_s = time.perf_counter() - t0
        ids, mat = embedding_matrix(pq.read_table(f"{d}/emb"))
        diff = max(float(np.abs(bare["emb"][u] - e).max()) for u, e in zip(ids, mat, strict=True))
        hours = pq.read_table(man.utterances, columns=["duration_s"]).column("duration_s")
        audio_h = float(np.sum(hours.to_numpy())) / 3600
    n = bare["rows"]
    return {
        "benchmark": "embed",
        "model": f"ecapa channels={channels} embed_dim={dim}, 40 log-mel",
        "utterances": n,
        "audio_hours": round(audio_h, 3),
        "cpus": cpus,
        "gpus_per_actor": ours.get("gpus_per_actor", 0.0),
        "bare_loop_s": round(bare["seconds"], 2),
        "bare_loop_utts_per_s": round(n / bare["seconds"], 1),
        "raysv_embed_s": round(ray_s, 2),
        "raysv_embed_utts_per_s": round(ours["rows"] / ray_s, 1),
        "ratio_raysv_over_bare": round((ours["rows"] / ray_s) / (n / bare["seconds"]), 3),
        "rows_match": ours["rows"] == n == len(ids),
        "max_abs_embedding_diff": diff,
    }
