"""Writing a waveform encoder (:func:`raysv.export.frontend.build_wave_encoder`) as ONNX
and TorchScript, both with dynamic batch and time axes.

ONNX: torch's TorchScript-based exporter (``dynamo=False``) at opset 17 with
``dynamic_axes``: with torch 2.11 it exports all three encoder families (ECAPA-TDNN,
ResNet, LSTM) in seconds, and ONNX Runtime matches PyTorch to ~1e-5 at every length
tried. The dynamo exporter (torch's default) fails on the LSTM encoder
(``torch.export`` cannot trace ``aten.lstm``) and took 30 s on a tiny ECAPA.
TorchScript: ``torch.jit.trace``; the graphs have no length-dependent Python
branches, so the trace holds for every length (tested).
"""

from __future__ import annotations

import warnings

OPSET = 17
INPUT = "wave"  # (batch, time) float32, 16 kHz, [-1, 1]
OUTPUT = "embedding"  # (batch, D) float32, not normalised


def example_input(batch: int = 2, seconds: float = 1.0):
    """A ``(batch, T)`` float32 waveform to trace with (seeded noise)."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, int(seconds * 16000), generator=g) * 0.1


def write_onnx(model, path: str) -> str:
    """``model`` (``wave (B, T) -> (B, D)``, eval mode) to ONNX at ``path``."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes: checked by the tests
        torch.onnx.export(
            model,
            (example_input(),),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch", 1: "time"}, OUTPUT: {0: "batch"}},
        )
    import onnx

    onnx.checker.check_model(path)
    return path


def write_torchscript(model, path: str) -> str:
    """``model`` traced to TorchScript at ``path`` (load with ``torch.jit.load``)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example_input(),), check_trace=False)
    traced.save(path)
    return path
