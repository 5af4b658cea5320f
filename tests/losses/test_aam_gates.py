"""AAM-softmax against a direct angle computation; gates none / lgl / dlg / dlg-lc."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raysv.losses import gates
from raysv.losses.aam import AAMSoftmax


def _head(c=5, d=8, m=0.2, s=30.0):
    torch.manual_seed(0)
    return AAMSoftmax(d, c, margin=m, scale=s)


def test_margin_logits_match_the_angle_formula():
    head = _head()
    emb = torch.randn(16, 8)
    labels = torch.randint(0, 5, (16,))
    cos = head.cosine(emb)
    expected_cos = F.normalize(emb, dim=1) @ F.normalize(head.weight, dim=1).T
    assert torch.allclose(cos, expected_cos, atol=1e-6)
    logits = head.margin_logits(cos, labels)
    for i in range(16):
        for j in range(5):
            c = float(cos[i, j])
            theta = math.acos(max(-1.0, min(1.0, c)))
            if j == int(labels[i]):
                want = 30.0 * (
                    math.cos(theta + 0.2)
                    if theta + 0.2 <= math.pi
                    else c - math.sin(math.pi - 0.2) * 0.2
                )
            else:
                want = 30.0 * c
            assert abs(float(logits[i, j]) - want) < 1e-3, (i, j)


def test_zero_margin_is_scaled_cosine_cross_entropy_and_margin_raises_loss():
    emb, labels = torch.randn(32, 8), torch.randint(0, 5, (32,))
    plain = _head(m=0.0)
    cos = plain.cosine(emb)
    assert torch.allclose(
        plain.per_sample_loss(cos, labels),
        F.cross_entropy(30.0 * cos, labels, reduction="none"),
        atol=1e-5,
    )
    margin = _head(m=0.2)
    assert bool((margin.per_sample_loss(cos, labels) > plain.per_sample_loss(cos, labels)).all())


def test_aam_trains_towards_the_labels():
    torch.manual_seed(1)
    centres = torch.randn(4, 8) * 3
    labels = torch.arange(4).repeat(16)
    emb = centres[labels] + torch.randn(64, 8) * 0.3
    head = AAMSoftmax(8, 4)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = head.per_sample_loss(head.cosine(emb), labels).mean()
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.3 * first
    assert (head.cosine(emb).argmax(1) == labels).float().mean() > 0.95


def test_head_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        AAMSoftmax(8, 1)


def test_gates_decide_who_trains():
    loss = torch.tensor([0.5, 2.0, 4.0, 9.0])
    labels = torch.tensor([0, 1, 2, 3])
    probs = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.02],
            [0.1, 0.8, 0.05, 0.05],
            [0.95, 0.02, 0.02, 0.01],  # rejected, confident in class 0 -> corrected
            [0.3, 0.3, 0.2, 0.2],  # rejected, not confident -> dropped
        ]
    )
    none = gates.decide("none", loss, labels, None, 3.0, 0.9)
    assert none.train.all() and not none.corrected.any()
    lgl = gates.decide("lgl", loss, labels, None, 3.0, 0.9)
    assert lgl.train.tolist() == [True, True, False, False]
    warm = gates.decide("lgl", loss, labels, None, None, 0.9)
    assert warm.train.all()  # tau None: gate open during warm-up
    lc = gates.decide("dlg-lc", loss, labels, probs, 3.0, 0.9)
    assert lc.passed.tolist() == [True, True, False, False]
    assert lc.corrected.tolist() == [False, False, True, False]
    assert lc.labels.tolist() == [0, 1, 0, 3]
    assert lc.train.tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="unknown gate"):
        gates.decide("nope", loss, labels, None, 1.0, 0.5)


def test_gated_mean_averages_only_trained_samples_and_keeps_a_graph():
    x = torch.tensor([1.0, 2.0, 3.0, 10.0], requires_grad=True)
    m = gates.gated_mean(x, torch.tensor([True, True, True, False]))
    assert float(m) == pytest.approx(2.0)
    m.backward()
    assert x.grad.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    empty = gates.gated_mean(x, torch.zeros(4, dtype=torch.bool))
    assert float(empty) == 0.0 and empty.requires_grad


def test_mixture_threshold_separates_low_and_high_loss_groups():
    rng = np.random.default_rng(0)
    low = rng.normal(1.0, 0.3, 800)
    high = rng.normal(8.0, 1.0, 200)
    tau = gates.mixture_threshold(np.concatenate([low, high]))
    assert 2.0 < tau < 6.5
    assert (low < tau).mean() > 0.99 and (high < tau).mean() < 0.02
    shifted = gates.mixture_threshold(np.concatenate([low + 2, high + 2]))
    assert shifted == pytest.approx(tau + 2, abs=0.5)


def test_mixture_threshold_is_open_for_degenerate_losses():
    assert gates.mixture_threshold(np.full(100, 3.0)) == float("inf")
    assert gates.mixture_threshold(np.array([1.0, 2.0])) == float("inf")
