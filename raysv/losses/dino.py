"""DINO self-distillation (Caron et al., ICCV 2021) for speaker embeddings.

A student and a teacher (an exponential moving average of the student) share an
architecture: the encoder, then a projection head (MLP -> bottleneck -> L2
normalisation -> weight-normalised layer of K prototypes). The teacher sees the
global views of an item, the student every view (global and local crops); the
loss is the cross-entropy between the teacher's centred, sharpened distribution
of one global view and the student's distribution of every *other* view:

    L = mean over items of  sum_{g} sum_{v != g} H(P_t(x_g), P_s(x_v)) / n_pairs
    P_t(x) = softmax((t(x) - c) / tau_t),   P_s(x) = softmax(s(x) / tau_s)

The centre ``c`` is an EMA (``center_momentum``) of the teacher outputs of the
*global* batch (all workers; :meth:`DinoLoss.update_center`), ``tau_t`` warms up
linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over the first share of
the epochs, and the teacher follows the student with a momentum that rises from
``teacher_momentum`` to 1 on a cosine schedule over all steps (:func:`ema_update`).

Defaults are wespeaker's DINO recipe for ECAPA-TDNN on VoxCeleb (itself DINO's
for speakers): 65536 prototypes, a 3-layer head of width 2048 with a 256-d
bottleneck and batch norm, student temperature 0.1, teacher 0.04 -> 0.07 over
the first 20 % of epochs, centre momentum 0.9, teacher momentum 0.996 -> 1,
2 global crops of 3 s and 4 local crops of 2 s, gradient clipping at 3 and the
last layer frozen for the first epoch. The demo uses a smaller head (see
``DinoSpec`` in ``raysv.training.config``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DinoHead(nn.Module):
    """Projection head: ``(N, D) -> (N, K)`` logits over K prototypes.

    ``layers`` linear layers (hidden width ``hidden``, GELU, optional batch norm)
    down to ``bottleneck``, L2 normalisation, then a weight-normalised linear
    layer without bias to ``out_dim`` prototypes; ``norm_last_layer`` fixes the
    prototypes' norm at 1 (their direction alone is learnt).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 2048,
        bottleneck: int = 256,
        layers: int = 3,
        use_bn: bool = True,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"dino.head_layers must be >= 1, got {layers}")
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                if use_bn:
                    mods.append(nn.BatchNorm1d(dims[i + 1]))
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, out_dim, bias=False)
        )
        self.last.parametrizations.weight.original0.data.fill_(1.0)  # the norm g
        if norm_last_layer:
            self.last.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the prototype layer (frozen during the first epoch(s))."""
        return list(self.last.parameters())


class Student(nn.Module):
    """Encoder + DINO head in one module, so DDP synchronises both (one forward a step).

    ``forward([crops_1 (N_1, T_1, n_mels), ...]) -> (embeddings (sum N, D), logits
    (sum N, K))``: the encoder runs once per crop length, the head once on all of
    them together (its batch norm sees global and local crops alike, as DINO's
    multi-crop wrapper does), in float32 even under autocast (bfloat16 would round
    the sharpened prototype scores).
    """

    def __init__(self, encoder: nn.Module, head: DinoHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.cat([self.encoder(c) for c in crops], dim=0)
        with torch.autocast(device_type=emb.device.type, enabled=False):
            return emb, self.head(emb.float())


def teacher_temperature(
    epoch: int, epochs: int, warmup: float, final: float, warmup_share: float
) -> float:
    """Teacher temperature of ``epoch`` (0-based): ``linspace(warmup, final, n)`` over the
    first ``n = round(warmup_share * epochs)`` epochs (DINO's schedule), then ``final``."""
    n = int(round(warmup_share * epochs))
    if n <= 0 or epoch >= n:
        return final
    if n == 1:
        return warmup
    return warmup + (final - warmup) * epoch / (n - 1)  # linspace(warmup, final, n)


def teacher_momentum(step: int, total_steps: int, base: float) -> float:
    """EMA momentum at ``step``: ``1 - (1 - base) (cos(pi step / total) + 1) / 2`` (base -> 1)."""
    if total_steps <= 1:
        return base
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(step, total_steps) / total_steps) + 1) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- m teacher + (1 - m) student``, parameter by parameter (DINO's). Buffers
    (batch-norm statistics) are the teacher's own, from its own forward passes. Every
    rank holds the same student parameters after DDP's averaged step, so every rank's
    teacher parameters stay the same."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


class DinoLoss(nn.Module):
    """Cross-entropy of teacher and student distributions over pairs of different views,
    with the teacher centred (EMA ``center``) and sharpened.

    ``forward(student (B, V, K), teacher (B, G, K), teacher_temp) -> per-item loss (B,)``:
    views ``0..G-1`` of the student are the global views the teacher saw (same order),
    the rest local ones. Each teacher view ``g`` is paired with every student view
    ``v != g``.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        b, v, _ = student.shape
        g = teacher.shape[1]
        log_s = F.log_softmax(student.float() / self.student_temp, dim=-1)  # (B, V, K)
        p_t = F.softmax((teacher.float() - self.center) / teacher_temp, dim=-1).detach()
        # every (teacher g, student v) pair: (B, G, V) cross-entropies
        ce = -torch.einsum("bgk,bvk->bgv", p_t, log_s)
        mask = torch.ones(g, v, dtype=torch.bool, device=ce.device)
        mask[torch.arange(g), torch.arange(g)] = False  # not a view against itself
        return (ce * mask).sum(dim=(1, 2)) / mask.sum()

    @torch.no_grad()
    def update_center(
        self, teacher: torch.Tensor, total: tuple[torch.Tensor, float] | None = None
    ) -> None:
        """``center <- m center + (1 - m) mean`` of the teacher outputs ``(B, G, K)``.

        ``total``: ``(sum of outputs (1, K), count)`` over the global batch when training
        on several workers (already all-reduced by the caller); None: this batch alone.
        """
        if total is None:
            mean = teacher.float().reshape(-1, teacher.shape[-1]).mean(dim=0, keepdim=True)
        else:
            sums, count = total
            mean = sums / count
        self.center.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)


def collapse_sums(teacher: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Sums that :func:`collapse_figures` turns into the collapse watch, for teacher outputs
    ``(N, K)``: ``(K + 2,)`` = the summed centred, sharpened distributions, the summed
    per-sample entropies, and N. Add them over steps and ranks, then divide once."""
    p = F.softmax((teacher.float() - center) / temp, dim=-1)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return torch.cat(
        [p.sum(0), ent.sum().reshape(1), torch.tensor([float(p.shape[0])], device=p.device)]
    )


def collapse_figures(sums: torch.Tensor) -> dict:
    """From :func:`collapse_sums` (over an epoch, all workers): the mean per-sample entropy
    and the KL divergence of the mean distribution from uniform, both divided by log K
    (0..1). Entropy near 1: every output uniform; KL near 1: every output on one
    prototype. The mean is over the whole epoch, so a healthy teacher's KL does not
    depend on the batch size."""
    k = sums.shape[0] - 2
    n = float(sums[-1])
    mean = sums[:k].double() / max(n, 1.0)
    kl = float((mean * torch.log(mean.clamp_min(1e-12) * k)).sum())
    return {
        "teacher_entropy": float(sums[k]) / max(n, 1.0) / math.log(k),
        "teacher_kl_uniform": kl / math.log(k),
    }
