"""Contrastive losses over a batch of embeddings grouped by dialogue (or utterance views).

All losses take ``x`` of shape ``(N, M, D)``: N groups (dialogues, or
utterances for NT-Xent) of M embeddings (utterances, or views), and return
per-sample losses of shape ``(N, Q)`` (Q = M, or 1 for A-Proto), so that a
per-group weight (rejection) can be applied by the caller.

Cosine similarity is ``s(a, b)``; all similarities are computed once as a
``(N*M, N*M)`` matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Scaled(nn.Module):
    """Affine map ``w * cos + b`` on similarities with learnable (or fixed) w, b.

    w is kept positive (clamped at 1e-6), as in GE2E.
    """

    def __init__(self, scale: float, bias: float, learnable: bool):
        super().__init__()
        if learnable:
            self.w = nn.Parameter(torch.tensor(float(scale)))
            self.b = nn.Parameter(torch.tensor(float(bias)))
        else:
            self.register_buffer("w", torch.tensor(float(scale)))
            self.register_buffer("b", torch.tensor(float(bias)))

    def affine(self, s: torch.Tensor) -> torch.Tensor:
        return self.w.clamp(min=1e-6) * s + self.b


def _exclusive_centroids(x: torch.Tensor) -> torch.Tensor:
    """``(N, M, D) -> (N, M, D)``: for each j, the mean of the other M-1 embeddings."""
    m = x.shape[1]
    return (x.sum(dim=1, keepdim=True) - x) / (m - 1)


def _check_groups(x: torch.Tensor, min_m: int = 2) -> None:
    if x.dim() != 3 or x.shape[1] < min_m or x.shape[0] < 2:
        raise ValueError(f"expected embeddings (N>=2, M>={min_m}, D), got {tuple(x.shape)}")


class AllVersusAll(_Scaled):
    """AvA (dialogue paper, eq. 4): positive = exclusive centroid of the own dialogue;
    negatives = every embedding of every other dialogue (M*(N-1) of them).

    ``scale=1, bias=0, learnable=False`` is exactly the paper's equation. The
    default multiplies cosines by a learnable scale (init 10) as A-Proto and
    GE2E do: with raw cosines in [-1, 1] the softmax over M*(N-1)+1 entries is
    nearly flat and learning is slow.
    """

    def __init__(self, scale: float = 10.0, bias: float = 0.0, learnable: bool = True):
        super().__init__(scale, bias, learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_groups(x)
        n, m, d = x.shape
        xn = F.normalize(x, dim=-1)
        pos = (xn * F.normalize(_exclusive_centroids(x), dim=-1)).sum(-1)  # (N, M)
        flat = xn.reshape(n * m, d)
        sim = flat @ flat.T  # (NM, NM)
        dialogue = torch.arange(n, device=x.device).repeat_interleave(m)
        same = dialogue[:, None] == dialogue[None, :]
        neg = self.affine(sim).masked_fill(same, float("-inf"))
        logits = torch.cat([self.affine(pos).reshape(n * m, 1), neg], dim=1)
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).reshape(n, m)


class GE2E(_Scaled):
    """GE2E softmax loss (Wan et al.): each utterance against every dialogue centroid;
    its own centroid excludes itself. Learnable w (init 10) and b (init -5)."""

    def __init__(self, scale: float = 10.0, bias: float = -5.0, learnable: bool = True):
        super().__init__(scale, bias, learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_groups(x)
        n, m, _ = x.shape
        xn = F.normalize(x, dim=-1)
        cent = F.normalize(x.mean(dim=1), dim=-1)  # (N, D)
        sim = torch.einsum("nmd,kd->nmk", xn, cent)  # (N, M, N)
        own = (xn * F.normalize(_exclusive_centroids(x), dim=-1)).sum(-1)  # (N, M)
        eye = torch.eye(n, dtype=torch.bool, device=x.device)[:, None, :].expand(n, m, n)
        sim = torch.where(eye, own[:, :, None].expand(n, m, n), sim)
        logits = self.affine(sim)
        target = torch.arange(n, device=x.device)[:, None].expand(n, m)
        return F.cross_entropy(
            logits.reshape(n * m, n), target.reshape(-1), reduction="none"
        ).reshape(n, m)


class AngularPrototypical(_Scaled):
    """A-Proto (Chung et al., 2020): utterance 0 of each dialogue is the query, the mean
    of the other M-1 its prototype; each query is classified among all N prototypes.
    Returns ``(N, 1)``. Learnable w (init 10) and b (init -5)."""

    def __init__(self, scale: float = 10.0, bias: float = -5.0, learnable: bool = True):
        super().__init__(scale, bias, learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_groups(x)
        query = F.normalize(x[:, 0], dim=-1)
        proto = F.normalize(x[:, 1:].mean(dim=1), dim=-1)
        logits = self.affine(query @ proto.T)  # (N, N)
        target = torch.arange(x.shape[0], device=x.device)
        return F.cross_entropy(logits, target, reduction="none")[:, None]


class NTXent(nn.Module):
    """SimCLR's NT-Xent over ``(N, 2, D)``: view pairs are positives, all other 2N-2
    segments negatives; ``temperature`` None means raw cosines (the LGL paper)."""

    def __init__(self, temperature: float | None = 0.1):
        super().__init__()
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0 or None, got {temperature}")
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 2 or x.shape[0] < 2:
            raise ValueError(f"NT-Xent expects (N>=2, 2, D) view pairs, got {tuple(x.shape)}")
        n = x.shape[0]
        z = F.normalize(x, dim=-1).reshape(2 * n, -1)  # rows: u0v0, u0v1, u1v0, ...
        sim = z @ z.T
        if self.temperature is not None:
            sim = sim / self.temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=x.device), float("-inf"))
        partner = torch.arange(2 * n, device=x.device) ^ 1  # 0<->1, 2<->3, ...
        return F.cross_entropy(sim, partner, reduction="none").reshape(n, 2)
