"""Encoder checkpoints (``best_model.pt``) shared by Stage I, Stage II and embedding.

A checkpoint is a ``torch.save``'d dict with ``model`` (the encoder's
state dict) and ``encoder`` = ``{"name", "n_mels", "kwargs"}``, enough to
rebuild it; ``config`` holds the resolved config of the run that wrote it.
Checkpoints written before ``encoder`` existed carry only a Stage I
``config``, from which the spec is read. Loading uses ``weights_only=True``:
a file whose pickle would run code is refused.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from raysv.errors import ConfigError


def encoder_spec(name: str, n_mels: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "n_mels": int(n_mels), "kwargs": dict(kwargs)}


# The checkpoint format this raysv writes. Checkpoints without a format entry
# (written before it existed) hold the same entries and still load; a newer
# or foreign format is refused with what to do.
FORMAT = "raysv-encoder/2"
# Format 1 differs only in ECAPA-TDNN's defaults then (blocks chained, aggregation 3C
# wide): its ECAPA specs are read with those settings made explicit.
READS = ("raysv-encoder/1", FORMAT)


def _as_format_2(spec: dict[str, Any]) -> dict[str, Any]:
    """An ECAPA spec of format 1 with its architecture explicit (see :data:`READS`)."""
    if not str(spec.get("name", "")).startswith("ecapa"):
        return spec
    kwargs = dict(spec.get("kwargs", {}))
    channels = kwargs.get(
        "channels", {"ecapa_c512": 512, "ecapa_c1024": 1024}.get(spec["name"], 512)
    )
    kwargs.setdefault("block_input", "chain")
    kwargs.setdefault("mfa_channels", 3 * channels)
    return {**spec, "kwargs": kwargs}


def save_encoder(path: str, state: dict, spec: dict[str, Any], config: dict | None = None) -> str:
    """Write an encoder checkpoint (through a temporary file and a rename: a kill
    leaves the old checkpoint or the new one); returns ``path``."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save({"format": FORMAT, "model": state, "encoder": spec, "config": config or {}}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_checkpoint(path: str) -> tuple[dict, dict[str, Any]]:
    """``(state_dict, encoder spec)`` of a checkpoint; clear errors for missing/foreign files."""
    import torch

    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such encoder checkpoint")
    try:
        # weights_only: tensors and plain values only; a pickle that would import or
        # call anything else (os.system, ...) is refused, never run.
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # a corrupt file, not a refused object
            raise ConfigError(f"{path}: not a readable torch checkpoint (corrupt pickle)") from exc
        raise ConfigError(
            f"{path}: refused: the checkpoint holds more than tensors and plain values "
            "(only raysv encoder checkpoints load; nothing in it was run)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a readable torch checkpoint ({first})") from exc
    if not isinstance(blob, dict) or "model" not in blob:
        raise ConfigError(f"{path}: not a raysv encoder checkpoint (no 'model' entry)")
    fmt = blob.get("format", READS[0])  # no entry: written before format 1 existed
    if fmt not in READS:
        raise ConfigError(
            f"{path}: encoder checkpoint format {blob['format']!r}, this raysv reads "
            f"{', '.join(repr(f) for f in READS)}; use the raysv version that wrote it, or retrain"
        )
    spec = blob.get("encoder")
    if spec is None:
        cfg = blob.get("config") or {}
        try:
            spec = encoder_spec(
                cfg["model"]["name"], cfg["data"].get("n_mels", 40), cfg["model"].get("kwargs", {})
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{path}: checkpoint has neither an 'encoder' spec nor a Stage I config"
            ) from exc
    if fmt != FORMAT:
        spec = _as_format_2(spec)
    return blob["model"], spec


def load_encoder(path: str):
    """Rebuild the encoder of checkpoint ``path`` with its weights: ``(model, spec)``."""
    from raysv.models import build_encoder

    state, spec = read_checkpoint(path)
    model = build_encoder(spec["name"], spec["n_mels"], **spec["kwargs"])
    model.load_state_dict(state)
    return model, spec


def plain_values(obj):
    """``obj`` with numpy scalars and arrays turned into Python numbers and lists
    (recursively through dicts, lists and tuples), so that ``torch.load(...,
    weights_only=True)`` reads it back: checkpoints hold tensors and plain values only."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: plain_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_values(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def load_training_state(path: str) -> dict:
    """A Ray Train checkpoint's ``state.pt``, tensors and plain values only (a pickle
    that would run code is refused, never run)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{path}: refused: the training checkpoint holds more than tensors and plain "
            "values (nothing in it was run); resume only run folders raysv wrote"
        ) from exc
