import math

import pytest
import torch
import torch.nn.functional as F

from raysv.errors import ConfigError
from raysv.losses import build_loss
from raysv.losses.contrastive import GE2E, AllVersusAll, AngularPrototypical, NTXent
from raysv.losses.rejection import Rejection, compactness


def _cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def test_ava_matches_the_paper_equation_by_loops():
    torch.manual_seed(0)
    n, m, d = 4, 3, 5
    x = torch.randn(n, m, d)
    got = AllVersusAll(scale=1.0, bias=0.0, learnable=False)(x)
    for i in range(n):
        for j in range(m):
            c = torch.stack([x[i, k] for k in range(m) if k != j]).mean(0)
            pos = math.exp(_cos(x[i, j], c))
            neg = sum(
                math.exp(_cos(x[i, j], x[k, q])) for k in range(n) if k != i for q in range(m)
            )
            assert float(got[i, j]) == pytest.approx(-math.log(pos / (neg + pos)), rel=1e-5)


def test_ge2e_by_loops():
    torch.manual_seed(1)
    n, m, d = 3, 4, 6
    x = torch.randn(n, m, d)
    loss = GE2E(scale=2.0, bias=-1.0, learnable=False)
    got = loss(x)
    for i in range(n):
        for j in range(m):
            logits = []
            for k in range(n):
                c = torch.stack([x[k, q] for q in range(m) if not (k == i and q == j)]).mean(0)
                logits.append(2.0 * _cos(x[i, j], c) - 1.0)
            lse = math.log(sum(math.exp(v) for v in logits))
            assert float(got[i, j]) == pytest.approx(lse - logits[i], rel=1e-5)


def test_aproto_by_loops():
    torch.manual_seed(2)
    x = torch.randn(3, 3, 4)
    got = AngularPrototypical(scale=3.0, bias=0.0, learnable=False)(x)
    assert got.shape == (3, 1)
    for i in range(3):
        logits = [3.0 * _cos(x[i, 0], x[k, 1:].mean(0)) for k in range(3)]
        assert float(got[i, 0]) == pytest.approx(
            math.log(sum(math.exp(v) for v in logits)) - logits[i], rel=1e-5
        )


def test_ntxent_by_loops():
    torch.manual_seed(3)
    x = torch.randn(3, 2, 4)
    got = NTXent(temperature=0.5)(x)
    z = x.reshape(6, 4)
    for a in range(6):
        partner = a ^ 1
        logits = [_cos(z[a], z[b]) / 0.5 for b in range(6) if b != a]
        pos = _cos(z[a], z[partner]) / 0.5
        assert float(got[a // 2, a % 2]) == pytest.approx(
            math.log(sum(math.exp(v) for v in logits)) - pos, rel=1e-5
        )
    assert NTXent(None)(x).shape == (3, 2)


@pytest.mark.parametrize("name", ["ava", "ge2e", "aproto"])
def test_dialogue_losses_fall_when_groups_separate(name):
    torch.manual_seed(0)
    centres = torch.randn(8, 1, 16)
    tight = centres + 0.05 * torch.randn(8, 3, 16)
    loose = torch.randn(8, 3, 16)
    loss = build_loss(name)
    assert loss(tight).mean() < loss(loose).mean()
    x = loose.clone().requires_grad_(True)
    loss(x).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_shapes_and_names():
    with pytest.raises(ValueError, match="expected embeddings"):
        AllVersusAll()(torch.randn(4, 1, 3))
    with pytest.raises(ValueError, match="view pairs"):
        NTXent()(torch.randn(4, 3, 3))
    with pytest.raises(
        ConfigError, match="unknown loss 'arcface'; valid: ava, aproto, ge2e, ntxent"
    ):
        build_loss("arcface")
    with pytest.raises(ValueError, match="temperature"):
        NTXent(temperature=0)


def test_compactness_is_detached_and_correct():
    x = torch.randn(2, 3, 4, requires_grad=True)
    c = compactness(x)
    assert not c.requires_grad
    xn = F.normalize(x.detach(), dim=-1)
    expect = (xn[0, 0] @ xn[0, 1] + xn[0, 0] @ xn[0, 2] + xn[0, 1] @ xn[0, 2]) * 2 / 6
    assert float(c[0]) == pytest.approx(float(expect), rel=1e-5)


def test_rejection_weights_and_gradient_only_to_temperature():
    rej = Rejection(threshold=0.5, temperature=10.0)
    assert float(rej.temperature.detach()) == pytest.approx(10.0, rel=1e-5)
    x = torch.randn(4, 3, 8, requires_grad=True)
    losses = (x**2).sum(-1)  # (4, 3), depends on x
    loss, w, c = rej(losses, x)
    assert torch.allclose(w, torch.sigmoid(10.0 * (c - 0.5)))
    assert float(loss) == pytest.approx(float((w * losses.mean(1)).sum() / w.sum()), rel=1e-5)
    loss.backward()
    assert rej.raw_t.grad is not None
    # The weights do not push gradient into the embeddings except through the losses.
    x2 = x.detach().clone().requires_grad_(True)
    rej(torch.zeros(4, 3), x2)[0].backward()
    assert x2.grad is None or torch.all(x2.grad == 0)


def _train_temperature(
    normalise: bool, steps: int = 400
) -> tuple[Rejection, torch.Tensor, torch.Tensor]:
    """Optimise only T on fixed per-dialogue losses, all dialogues below the threshold
    (early training, or t set too high): the situation where weights can collapse."""
    torch.manual_seed(0)
    rej = Rejection(threshold=0.5, temperature=5.0, normalise=normalise)
    comp = torch.rand(64) * 0.35 + 0.1  # 0.1 .. 0.45 < t
    per = 2.0 + 2.0 * (0.45 - comp)  # less compact dialogues have larger losses
    opt = torch.optim.Adam(rej.parameters(), lr=0.1)
    for _ in range(steps):
        w = torch.sigmoid(rej.temperature * (comp - rej.threshold))
        loss = (w * per).sum() / w.sum() if normalise else (w * per).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rej, comp, per


def test_plain_weighted_sum_collapses_but_normalised_does_not():
    rej, comp, per = _train_temperature(normalise=False)
    w = torch.sigmoid(rej.temperature * (comp - 0.5)).detach()
    # The paper's plain sum lowers its loss by shrinking every weight: the loss
    # ends ~20x smaller than any dialogue's loss, so learning all but stops.
    assert float(w.mean()) < 0.06
    assert float((w * per).mean()) < 0.1 * float(per.min())

    rej, comp, per = _train_temperature(normalise=True)
    t = float(rej.temperature.detach())
    w = torch.sigmoid(t * (comp - 0.5))
    loss = float((w * per).sum() / w.sum())
    assert t <= 20.0 + 1e-4  # bounded
    # The loss stays a weighted average of real dialogue losses ...
    assert float(per.min()) <= loss <= float(per.max())
    # ... spread over a good share of the batch (effective sample size).
    ess = float(w.sum() ** 2 / (w**2).sum()) / w.numel()
    assert ess > 0.2
