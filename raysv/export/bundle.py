"""``raysv export``: a checkpoint -> a folder with ``model.onnx``, ``model.ts`` and the
``model.json`` card, written whole or not at all.

The folder is written as a hidden sibling and renamed into place with the
``_SUCCESS`` marker every raysv output carries (:mod:`raysv.data.outputs`): an
``--out`` holding files raysv did not write is refused, an earlier export is replaced.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow.parquet as pq

from raysv.errors import RaysvError
from raysv.export import frontend

log = logging.getLogger("raysv")

COMMAND = "raysv export"


def run_paths(checkpoint: str) -> dict:
    """Files a training run keeps beside its ``best_model.pt`` (those that exist):
    ``summary``, ``manifest_summary``, ``train`` (training manifest), ``dev_trials``,
    ``dev_utts`` (trials resolved to utt_ids and their utterances), ``centre_utts``
    (the training rows whose mean centred the run's dev scoring)."""
    run = os.path.dirname(os.path.abspath(checkpoint))
    cands = {
        "summary": os.path.join(run, "summary.json"),
        "manifest_summary": os.path.join(run, "manifests", "summary.json"),
        "train": os.path.join(run, "manifests", "train.parquet"),
        "dev_trials": os.path.join(run, "inputs", "dev_trials.parquet"),
        "dev_utts": os.path.join(run, "inputs", "dev_utts.parquet"),
        "test_trials": os.path.join(run, "inputs", "test_trials.parquet"),
        "test_utts": os.path.join(run, "inputs", "test_utts.parquet"),
        # the training rows whose mean centred the run's own dev scoring (issue #24)
        "centre_utts": os.path.join(run, "inputs", "centre_utts.parquet"),
    }
    return {k: v for k, v in cands.items() if os.path.isfile(v)}


def read_rows(manifest: str, limit: int | None = None, seed: int = 0) -> list[tuple]:
    """``[(utt_id, path, start_s, end_s)]`` of an utterances manifest, at most ``limit``
    rows drawn without replacement (seeded), in manifest order."""
    cols = ["utt_id", "path", "start_s", "end_s"]
    try:
        t = pq.read_table(manifest)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise RaysvError(
            f"{manifest}: not a Parquet manifest ({str(exc).splitlines()[0]})"
        ) from None
    missing = [c for c in cols if c not in t.column_names]
    if missing:
        raise RaysvError(f"{manifest}: the manifest lacks column(s) {', '.join(missing)}")
    rows = list(zip(*(t.column(c).to_pylist() for c in cols), strict=True))
    if limit is not None and len(rows) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
        rows = [rows[i] for i in keep]
    return rows


def embed_rows(forward, rows: list[tuple], max_seconds: float, bucket_seconds: float):
    """``(utt_ids, (n, D) embeddings, n_unreadable)`` of manifest rows (unreadable skipped)."""
    from raysv.audio import io
    from raysv.export.runtime import embed_waves

    keep, waves, bad = io.each_readable(
        rows,
        lambda r: frontend.read_wave(
            r[1], io.bound(r[2]), io.bound(r[3]), max_seconds, bucket_seconds
        ),
    )
    for _, exc in bad[:5]:
        log.warning("export: skipped %s", exc)
    if not waves:
        raise RaysvError("none of the utterances could be read")
    return [rows[i][0] for i in keep], embed_waves(forward, waves), len(bad)


def dev_operating_points(forward, trials: str, utts: str, centre: np.ndarray, fe: dict) -> dict:
    """EER, minDCF and the thresholds at the EER point and at minDCF(0.01) of the dev
    trials (resolved to utt_ids), scored ``cos(a - c, b - c)`` with ``centre``."""
    from raysv.evaluation.metrics import verification_report
    from raysv.export.card import centred_cosine, threshold_at_eer, threshold_at_min_dcf

    ids, emb, bad = embed_rows(forward, read_rows(utts), fe["max_seconds"], fe["bucket_seconds"])
    index = {u: i for i, u in enumerate(ids)}
    t = pq.read_table(trials)
    rows = [
        (lab, index[a], index[b])
        for lab, a, b in zip(
            *(t.column(c).to_pylist() for c in ("label", "enroll", "test")), strict=True
        )
        if a in index and b in index
    ]
    labels = np.array([r[0] for r in rows])
    scores = centred_cosine(emb[[r[1] for r in rows]], emb[[r[2] for r in rows]], centre)
    rep = verification_report(scores, labels)
    rep["thresholds"] = {
        "eer": threshold_at_eer(scores, labels),
        "min_dcf_0.01": threshold_at_min_dcf(scores, labels, 0.01),
    }
    rep["unscored_trials"] = t.num_rows - len(rows)
    rep["unreadable_utterances"] = bad
    return rep


def parity_check(model, onnx_path: str, ts_path: str, seconds=(1.3,)) -> dict:
    """Max abs difference of L2-normalised embeddings, ONNX Runtime and TorchScript
    against the eager model, on seeded noise of ``seconds`` (batch 2); raises if > 1e-4."""
    import onnxruntime as ort
    import torch

    from raysv.evaluation.scoring import l2_normalise

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ts = torch.jit.load(ts_path)
    worst = {"onnx": 0.0, "torchscript": 0.0}
    g = np.random.default_rng(0)
    for s in seconds:
        x = (g.standard_normal((2, int(s * 16000))) * 0.1).astype(np.float32)
        with torch.no_grad():
            ref = l2_normalise(model(torch.from_numpy(x)).numpy())
            got = {
                "onnx": sess.run(None, {"wave": x})[0],
                "torchscript": ts(torch.from_numpy(x)).numpy(),
            }
        for k, v in got.items():
            worst[k] = max(worst[k], float(np.abs(l2_normalise(v) - ref).max()))
    if max(worst.values()) > 1e-4:
        raise RaysvError(f"the exported graphs differ from the PyTorch encoder: {worst}")
    return worst


def refuse_other_outputs(out: str) -> None:
    """Refuse ``out`` when it is another raysv command's output (embeddings, labels):
    an export replaces only an earlier export."""
    from raysv.data import outputs
    from raysv.errors import OutputError

    if not os.path.isdir(out):
        return
    marker = outputs.read_marker(out) or {}
    if marker.get("command") not in (None, COMMAND):
        raise OutputError(
            f"{out}: holds the output of {marker['command']}, not an export; give another --out"
        )


def export_model(
    checkpoint: str,
    out: str,
    *,
    centre_manifest: str | None = None,
    dev_trials: str | None = None,
    dev_utts: str | None = None,
    centre_utterances: int = 2000,
    max_seconds: float = frontend.MAX_SECONDS,
    seed: int = 0,
) -> dict:
    """Export ``checkpoint`` into the folder ``out``; returns a summary (the card's
    figures and the files written).

    ``centre_manifest``: utterances whose mean embedding is the scoring centre (at most
    ``centre_utterances``, seeded draw); default: the run's training manifest beside
    the checkpoint, else the run's ``inputs/centre_utts.parquet`` (any training run
    since the one-convention change); none found: the centre is zero (plain cosine),
    recorded as such.
    ``dev_trials``/``dev_utts``: resolved dev trials and their utterances for the
    thresholds (default: the run's ``inputs/dev_*.parquet``).
    """
    import time

    from raysv.data import outputs
    from raysv.export import card as cards
    from raysv.export.graph import write_onnx, write_torchscript
    from raysv.export.runtime import torch_forward
    from raysv.models.checkpoint import load_encoder

    t0 = time.monotonic()
    if centre_utterances < 1:
        raise RaysvError(f"--centre-utterances must be at least 1, got {centre_utterances}")
    if not max_seconds > 0:
        raise RaysvError(f"--max-seconds must be positive, got {max_seconds}")
    if bool(dev_trials) != bool(dev_utts):
        raise RaysvError("give --dev-trials and --dev-utts together")
    outputs.check_out(out, COMMAND)  # refuse a foreign folder before any work
    refuse_other_outputs(out)
    encoder, spec = load_encoder(checkpoint)
    encoder.eval()
    model = frontend.build_wave_encoder(encoder, spec["n_mels"])
    forward = torch_forward(model)
    found = run_paths(checkpoint)
    fe = {
        "sample_rate": frontend.SAMPLE_RATE,
        "n_mels": spec["n_mels"],
        "frame_length_ms": 25.0,
        "frame_shift_ms": 10.0,
        "window": "hamming",
        "preemphasis": frontend.PREEMPHASIS,
        "n_fft": frontend.N_FFT,
        "mean_norm": True,
        "input_scale": 32768.0,
        "in_graph": True,
        "max_seconds": max_seconds,
        "bucket_seconds": frontend.BUCKET_SECONDS,
        "length_policy": "centre max_seconds, then the centre multiple of bucket_seconds "
        "(shorter than one bucket: repeated); applied before the graph "
        "(raysv.export.frontend.prepare_wave)",
    }
    centre_src = centre_manifest or found.get("train") or found.get("centre_utts")
    if centre_src:
        rows = read_rows(centre_src, centre_utterances, seed)
        _, emb, bad = embed_rows(forward, rows, max_seconds, frontend.BUCKET_SECONDS)
        centre = emb.mean(axis=0)
        source = "training manifest" if found.get("train") else "the run's centre sample"
        centre_from = {
            "source": "--centre-manifest" if centre_manifest else source,
            "utterances": int(emb.shape[0]),
            "unreadable": bad,
            "seed": seed,
        }
    else:
        dim = forward(np.zeros((1, 16000), np.float32)).shape[1]
        centre, centre_from = np.zeros(dim, np.float32), {"source": "none (zero centre)"}
    trials, utts = (
        (dev_trials, dev_utts) if dev_trials else (found.get("dev_trials"), found.get("dev_utts"))
    )
    dev = dev_operating_points(forward, trials, utts, centre, fe) if trials and utts else None
    test = None
    if not dev_trials and "test_trials" in found and "test_utts" in found:  # the run's own
        test = dev_operating_points(forward, found["test_trials"], found["test_utts"], centre, fe)
        test.pop("thresholds")  # thresholds come from dev only
    summary_json = outputs.read_json(found["summary"]) if "summary" in found else None
    manifest_json = (
        outputs.read_json(found["manifest_summary"]) if "manifest_summary" in found else None
    )
    card = cards.build_card(
        spec=spec,
        n_mels=spec["n_mels"],
        dim=int(centre.shape[0]),
        centre=centre,
        centre_from=centre_from,
        training=cards.training_counts(summary_json, manifest_json),
        recorded=cards.recorded_metrics(summary_json),
        dev=dev,
        frontend=fe,
    )
    card["test"] = test  # scored with the model's centre, like dev
    card["exporter"] = {
        "onnx": "torch.onnx.export(dynamo=False, opset 17)",
        "torchscript": "torch.jit.trace",
    }
    with outputs.staged(out, COMMAND) as tmp:
        onnx_path = write_onnx(model, os.path.join(tmp, "model.onnx"))
        ts_path = write_torchscript(model, os.path.join(tmp, "model.ts"))
        card["parity_max_abs_diff"] = parity_check(model, onnx_path, ts_path)
        outputs.write_json_atomic(os.path.join(tmp, "model.json"), card)
        outputs.commit(
            tmp, out, COMMAND, rows=0, extra={"files": ["model.onnx", "model.ts", "model.json"]}
        )
    return {
        "out": os.path.abspath(out),
        "files": ["model.onnx", "model.ts", "model.json"],
        "encoder": spec["name"],
        "embedding_dim": card["embedding_dim"],
        "centre_from": centre_from,
        "dev": {k: v for k, v in (dev or {}).items()},
        "test": test,
        "recorded_metrics": card["recorded_metrics"],
        "parity_max_abs_diff": card["parity_max_abs_diff"],
        "seconds": round(time.monotonic() - t0, 1),
    }
