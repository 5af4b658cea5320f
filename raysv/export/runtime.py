"""Embedding with an exported model: ONNX Runtime on CPU, no Ray.

Waves of equal length are batched together (the length policy makes lengths
multiples of 0.1 s, so a corpus falls into a few hundred lengths at most), as
``raysv embed`` batches them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from raysv.errors import ConfigError
from raysv.export import frontend
from raysv.export.card import centred_cosine, read_card


def embed_waves(
    forward: Callable[[np.ndarray], np.ndarray], waves: Sequence[np.ndarray], batch: int = 32
) -> np.ndarray:
    """``forward((B, T) float32) -> (B, D)`` over ``waves`` (each ``(T_i,)``), grouping
    equal lengths into batches of at most ``batch``; returns ``(len(waves), D)`` float32
    in the order of ``waves``."""
    order = sorted(range(len(waves)), key=lambda i: waves[i].shape[0])
    out: list[np.ndarray | None] = [None] * len(waves)
    i = 0
    while i < len(order):
        j = i
        n = waves[order[i]].shape[0]
        while j < len(order) and j - i < batch and waves[order[j]].shape[0] == n:
            j += 1
        x = np.stack([waves[t] for t in order[i:j]]).astype(np.float32, copy=False)
        for t, e in zip(order[i:j], forward(x), strict=True):
            out[t] = e
        i = j
    if not waves:
        raise ValueError("no waves to embed")
    return np.stack(out).astype(np.float32)


def torch_forward(model) -> Callable[[np.ndarray], np.ndarray]:
    """A ``(B, T) -> (B, D)`` numpy forward of a torch (eager or TorchScript) wave model."""
    import torch

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).float().numpy()

    return forward


class ExportedModel:
    """An exported model folder (``model.onnx`` + ``model.json``) on ONNX Runtime's CPU.

    ``embed(waves)`` -> ``(n, D)``; ``score(a, b)`` -> centred cosines; the card's
    ``threshold(point)``.
    """

    def __init__(self, folder: str, threads: int | None = None):
        self.folder = folder
        self.card = read_card(folder)
        path = os.path.join(folder, "model.onnx")
        if not os.path.isfile(path):
            raise ConfigError(f"{folder}: no model.onnx (re-export with raysv export)")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise ConfigError(f"{path}: ONNX Runtime cannot load it ({exc})") from None
        self.centre = np.asarray(self.card["scoring"]["centre"], dtype=np.float32)
        fe = self.card["frontend"]
        self.max_seconds, self.bucket_seconds = fe["max_seconds"], fe["bucket_seconds"]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(B, T)`` float32 waves -> ``(B, D)`` embeddings."""
        return self.session.run(None, {"wave": x})[0]

    def read(self, path: str, start_s: float | None = None, end_s: float | None = None):
        """One utterance as the card's length policy reads it (``(T,)`` float32)."""
        return frontend.read_wave(path, start_s, end_s, self.max_seconds, self.bucket_seconds)

    def embed(self, waves: Sequence[np.ndarray], batch: int = 32) -> np.ndarray:
        """Prepared waves (:meth:`read`) -> ``(n, D)`` float32 embeddings."""
        return embed_waves(self.forward, waves, batch)

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Centred cosine of rows of ``a`` and ``b`` (``(n, D)`` each) -> ``(n,)``."""
        return centred_cosine(a, b, self.centre)

    def threshold(self, point: str = "eer") -> float:
        """The card's threshold at ``point`` (``eer`` or ``min_dcf_0.01``)."""
        dev = self.card.get("dev") or {}
        t = (dev.get("thresholds") or {}).get(point)
        if t is None:
            why = (
                "the export had no dev trials"
                if not dev
                else f"at {point} rejecting every pair was cheapest on the dev trials"
            )
            raise ConfigError(
                f"{self.folder}: the card has no {point} threshold ({why}); give --threshold"
            )
        return float(t)
