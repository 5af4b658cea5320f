"""Speaker encoders: fbank ``(B, T, n_mels)`` -> embedding ``(B, D)``.

Builders by name (:data:`ENCODERS`); an unknown name raises ConfigError
listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

from raysv.errors import ConfigError


def _lstm(n_mels: int, **kw):
    from raysv.models.lstm import LSTMEncoder

    return LSTMEncoder(n_mels=n_mels, **kw)


def _resnet(n_mels: int, **kw):
    from raysv.models.resnet import ResNetEncoder

    return ResNetEncoder(n_mels=n_mels, **kw)


def _ecapa(n_mels: int, **kw):
    from raysv.models.ecapa import ECAPATDNN

    return ECAPATDNN(n_mels=n_mels, **kw)


def _ecapa512(n_mels: int, **kw):
    return _ecapa(n_mels, **{"channels": 512, **kw})


def _ecapa1024(n_mels: int, **kw):
    return _ecapa(n_mels, **{"channels": 1024, **kw})


ENCODERS: dict[str, Callable] = {
    "lstm": _lstm,  # the dialogue paper's 3 x 768 LSTM -> 256
    "resnet": _resnet,  # ResNet + statistics pooling (iterative paper)
    "ecapa": _ecapa,  # ECAPA-TDNN with configurable channels
    "ecapa_c512": _ecapa512,  # LGL paper's ECAPA-TDNN (C=512, 192-dim)
    "ecapa_c1024": _ecapa1024,
}


def embedding_dim(encoder, n_mels: int) -> int:
    """D of an encoder, from one forward pass on silence in eval mode."""
    import torch

    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        d = int(encoder(torch.zeros(1, 100, n_mels)).shape[1])
    encoder.train(was)
    return d


def build_encoder(name: str, n_mels: int, **kwargs):
    """Build encoder ``name`` for ``n_mels`` input bins; kwargs go to its constructor."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; valid: {', '.join(sorted(ENCODERS))}")
    try:
        return ENCODERS[name](n_mels, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r}: {exc}") from exc
