import pytest
import torch

from raysv.errors import ConfigError
from raysv.models import build_encoder


@pytest.mark.parametrize(
    "name,kwargs,dim",
    [
        ("lstm", {"hidden": 32, "layers": 2, "embed_dim": 16}, 16),
        ("resnet", {"channels": [8, 16], "blocks": [1, 1], "embed_dim": 24}, 24),
        ("ecapa", {"channels": 32, "embed_dim": 12}, 12),
    ],
)
def test_small_encoders_shapes_and_gradients(name, kwargs, dim):
    model = build_encoder(name, n_mels=40, **kwargs)
    x = torch.randn(3, 50, 40, requires_grad=True)
    y = model(x)
    assert y.shape == (3, dim)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Variable-length input works (whole utterances at evaluation).
    model.eval()
    assert model(torch.randn(2, 73, 40)).shape == (2, dim)


def test_paper_sizes():
    lstm = build_encoder("lstm", n_mels=40)
    assert lstm.lstm.hidden_size == 768 and lstm.lstm.num_layers == 3 and lstm.embed_dim == 256
    ecapa = build_encoder("ecapa_c512", n_mels=80)
    assert ecapa.embed_dim == 192
    n = sum(p.numel() for p in ecapa.parameters())
    assert 5.5e6 < n < 7.5e6  # ECAPA-TDNN C=512 has about 6.2 M parameters
    big = build_encoder("ecapa_c1024", n_mels=80)
    assert sum(p.numel() for p in big.parameters()) > 14e6


def test_unknown_encoder_and_bad_kwargs():
    with pytest.raises(
        ConfigError,
        match="unknown encoder 'wavlm'; valid: ecapa, ecapa_c1024, ecapa_c512, lstm, resnet",
    ):
        build_encoder("wavlm", n_mels=40)
    with pytest.raises(ConfigError, match="encoder 'lstm'"):
        build_encoder("lstm", n_mels=40, width=3)


def test_attentive_pooling_is_finite_on_constant_input():
    from raysv.models.pooling import AttentiveStatsPool

    pool = AttentiveStatsPool(4, 8).eval()
    y = pool(torch.ones(2, 4, 10))  # zero variance: the std must not be NaN
    assert torch.isfinite(y).all()
