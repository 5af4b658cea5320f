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


def save_encoder(path: str, state: dict, spec: dict[str, Any], config: dict | None = None) -> str:
    """Write an encoder checkpoint; returns ``path``."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"model": state, "encoder": spec, "config": config or {}}, path)
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
    return blob["model"], spec


def load_encoder(path: str):
    """Rebuild the encoder of checkpoint ``path`` with its weights: ``(model, spec)``."""
    from raysv.models import build_encoder

    state, spec = read_checkpoint(path)
    model = build_encoder(spec["name"], spec["n_mels"], **spec["kwargs"])
    model.load_state_dict(state)
    return model, spec
