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
    # 14.66 M with the paper's 1536-wide aggregation (wespeaker lists 14.65 M for its c1024)
    assert 14e6 < sum(p.numel() for p in big.parameters()) < 15.5e6


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


def test_ecapa_blocks_take_the_sum_of_earlier_outputs_and_mfa_is_1536_wide():
    """As in the ECAPA-TDNN paper: block k's input is the stem's output plus blocks
    1..k-1's; the aggregation layer is 1536 wide at C = 512 and 1024, 3C below."""
    import torch

    from raysv.models.ecapa import ECAPATDNN

    torch.manual_seed(0)
    m = ECAPATDNN(n_mels=24, channels=16, embed_dim=8, attn_bottleneck=8).eval()
    seen = []
    for b in m.blocks:
        b.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    x = torch.randn(2, 50, 24)
    with torch.no_grad():
        m(x)
        stem = m.stem(x.transpose(1, 2))
    (in1, out1), (in2, out2), (in3, _) = seen
    assert torch.allclose(in1, stem)
    assert torch.allclose(in2, stem + out1) and torch.allclose(in3, stem + out1 + out2)
    chained = ECAPATDNN(n_mels=24, channels=16, embed_dim=8, attn_bottleneck=8, block_input="chain")
    chained.load_state_dict(m.state_dict())  # the same weights; only the wiring differs
    with torch.no_grad():
        assert not torch.allclose(chained.eval()(x), m(x))
    assert m.mfa[0].out_channels == 48  # 3C below 512
    assert ECAPATDNN(channels=512).mfa[0].out_channels == 1536
    big = ECAPATDNN(channels=1024)
    assert (big.mfa[0].in_channels, big.mfa[0].out_channels) == (3072, 1536)


def test_a_format_1_ecapa_checkpoint_loads_as_it_was_trained(tmp_path):
    """Before format 2 the blocks were chained and the aggregation 3C wide: an old
    checkpoint's spec gets those settings, so its encoder computes what it did."""
    import torch

    from raysv.models import build_encoder
    from raysv.models.checkpoint import encoder_spec, load_encoder

    torch.manual_seed(1)
    kwargs = {"channels": 16, "embed_dim": 8, "attn_bottleneck": 8}
    old = build_encoder("ecapa", 24, **kwargs, block_input="chain", mfa_channels=48).eval()
    path = str(tmp_path / "old.pt")
    spec = encoder_spec("ecapa", 24, kwargs)  # format 1 did not record the wiring
    torch.save({"format": "raysv-encoder/1", "model": old.state_dict(), "encoder": spec}, path)
    enc, got = load_encoder(path)
    assert got["kwargs"]["block_input"] == "chain" and got["kwargs"]["mfa_channels"] == 48
    x = torch.randn(2, 50, 24)
    with torch.no_grad():
        assert torch.allclose(enc.eval()(x), old(x))
