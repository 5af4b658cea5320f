"""DINO's pieces without Ray: head, loss over view pairs, centre, schedules, EMA, collapse."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raysv.losses.dino import (
    DinoHead,
    DinoLoss,
    Student,
    collapse_figures,
    collapse_sums,
    ema_update,
    teacher_momentum,
    teacher_temperature,
)


def test_head_maps_embeddings_to_prototypes_with_unit_norm_prototypes():
    torch.manual_seed(0)
    head = DinoHead(16, 50, hidden=32, bottleneck=8, layers=3, use_bn=True)
    out = head(torch.randn(6, 16))
    assert out.shape == (6, 50)
    w = head.last.weight  # weight-normalised: each prototype's norm is g = 1, fixed
    assert torch.allclose(w.norm(dim=1), torch.ones(50), atol=1e-5)
    frozen = head.last.parametrizations.weight.original0
    assert not frozen.requires_grad
    free = DinoHead(16, 50, hidden=32, bottleneck=8, layers=1, norm_last_layer=False)
    assert free.last.parametrizations.weight.original0.requires_grad
    assert len([m for m in free.mlp if isinstance(m, torch.nn.Linear)]) == 1
    with pytest.raises(ValueError, match="head_layers"):
        DinoHead(16, 50, layers=0)


def _reference(student, teacher, center, ts, tt):
    """The loss written out pair by pair (DINO's definition)."""
    b, v, _ = student.shape
    g = teacher.shape[1]
    out = torch.zeros(b)
    pairs = 0
    for i in range(g):
        p = F.softmax((teacher[:, i] - center) / tt, dim=-1)
        for j in range(v):
            if j == i:
                continue
            out += -(p * F.log_softmax(student[:, j] / ts, dim=-1)).sum(-1)
            pairs += 1
    return out / pairs


def test_loss_is_the_mean_cross_entropy_over_pairs_of_different_views():
    torch.manual_seed(1)
    student, teacher = torch.randn(5, 6, 20), torch.randn(5, 2, 20)  # 2 global + 4 local
    loss = DinoLoss(20, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.randn(1, 20) * 0.1)
    got = loss(student, teacher, teacher_temp=0.05)
    assert got.shape == (5,)
    want = _reference(student, teacher, loss.center, 0.1, 0.05)
    assert torch.allclose(got, want, atol=1e-5)
    # a view is never paired with itself: identical global views only pair across
    same = torch.randn(3, 1, 20).repeat(1, 2, 1)
    assert torch.allclose(loss(same, same, 0.05), _reference(same, same, loss.center, 0.1, 0.05))
    # gradient reaches the student only
    s = student.clone().requires_grad_(True)
    t = teacher.clone().requires_grad_(True)
    loss(s, t, 0.05).sum().backward()
    assert s.grad is not None and t.grad is None


def test_center_is_an_ema_of_the_global_batch_mean():
    loss = DinoLoss(4, center_momentum=0.9)
    t = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]])  # (1, 2, 4)
    loss.update_center(t)
    assert torch.allclose(loss.center, 0.1 * torch.tensor([[0.5, 0.5, 0, 0]]))
    # given all workers' sum and count, the local batch does not matter
    loss.update_center(t, (torch.tensor([[4.0, 0, 0, 0]]), torch.tensor(4.0)))
    assert torch.allclose(
        loss.center,
        0.9 * 0.1 * torch.tensor([[0.5, 0.5, 0, 0]]) + 0.1 * torch.tensor([[1.0, 0, 0, 0]]),
    )


def test_teacher_temperature_and_momentum_schedules():
    temps = [teacher_temperature(e, 20, 0.04, 0.07, 0.2) for e in range(20)]  # linspace over 4
    assert temps[:4] == pytest.approx([0.04, 0.05, 0.06, 0.07]) and temps[4:] == [0.07] * 16
    assert teacher_temperature(0, 5, 0.04, 0.07, 0.2) == 0.04  # one warm-up epoch
    assert teacher_temperature(0, 10, 0.04, 0.07, 0.0) == 0.07
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert teacher_momentum(100, 100, 0.996) == pytest.approx(1.0)
    m = [teacher_momentum(s, 100, 0.996) for s in range(101)]
    assert all(a <= b for a, b in zip(m, m[1:], strict=False))


def test_ema_moves_the_teacher_towards_the_student_and_keeps_its_own_buffers():
    torch.manual_seed(2)
    student = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    student(torch.randn(8, 3))  # moves the student's running statistics
    before = teacher[0].weight.detach().clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher[0].weight, 0.9 * before + 0.1 * student[0].weight)
    assert torch.equal(teacher[1].running_mean, torch.zeros(3))  # the teacher's own statistics
    ema_update(teacher, student, 1.0)  # momentum 1: the teacher's weights stay
    assert torch.allclose(teacher[0].weight, 0.9 * before + 0.1 * student[0].weight)


def _figures(outputs, temp=0.04):
    return collapse_figures(collapse_sums(outputs, torch.zeros(1, outputs.shape[1]), temp))


def test_collapse_figures_tell_uniform_and_one_prototype_outputs_apart():
    k = 64
    uniform = _figures(torch.zeros(32, k))
    assert uniform["teacher_entropy"] == pytest.approx(1.0) and uniform["teacher_kl_uniform"] < 1e-6
    one = torch.zeros(32, k)
    one[:, 3] = 10.0
    spike = _figures(one)
    assert spike["teacher_entropy"] < 1e-3
    assert spike["teacher_kl_uniform"] == pytest.approx(1.0, abs=1e-3)
    rng = np.random.default_rng(0)
    spread = torch.zeros(32, k)
    spread[torch.arange(32), torch.from_numpy(rng.integers(0, k, 32))] = 10.0
    healthy = _figures(spread)
    assert healthy["teacher_entropy"] < 0.01 and healthy["teacher_kl_uniform"] < 0.5
    assert math.isfinite(healthy["teacher_kl_uniform"])
    # sums over steps: the KL of an epoch's mean, not the mean of per-batch KLs (which a
    # confident, healthy teacher would push towards 1 with 1-item batches)
    steps = [collapse_sums(spread[i : i + 1], torch.zeros(1, k), 0.04) for i in range(32)]
    assert collapse_figures(sum(steps))["teacher_kl_uniform"] == pytest.approx(
        healthy["teacher_kl_uniform"], rel=1e-5
    )
    assert _figures(spread[:1])["teacher_kl_uniform"] > 0.99


def test_student_runs_the_encoder_per_crop_length_and_the_head_once_in_float32():
    torch.manual_seed(3)
    calls = []

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 6)

        def forward(self, x):  # (N, T, 4) -> (N, 6)
            calls.append(tuple(x.shape))
            return self.lin(x.mean(1))

    head = DinoHead(6, 10, hidden=8, bottleneck=4, layers=2)
    student = Student(Enc(), head)
    head_inputs = []
    head.register_forward_hook(lambda m, a, o: head_inputs.append(a[0].shape))
    emb, logits = student([torch.randn(3, 20, 4), torch.randn(5, 10, 4)])
    assert calls == [(3, 20, 4), (5, 10, 4)] and head_inputs == [(8, 6)]
    assert emb.shape == (8, 6) and logits.shape == (8, 10) and logits.dtype == torch.float32
