"""Pooling over time: statistics pooling and attentive statistics pooling."""

from __future__ import annotations

import torch
from torch import nn


def stats_pool(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(B, C, T) -> (B, 2C)``: mean and standard deviation over time."""
    mean = x.mean(dim=-1)
    std = torch.sqrt(x.var(dim=-1, unbiased=False).clamp(min=eps))
    return torch.cat([mean, std], dim=-1)


class AttentiveStatsPool(nn.Module):
    """ECAPA's channel- and context-dependent attentive statistics pooling.

    ``(B, C, T) -> (B, 2C)``; the attention sees each frame together with the
    utterance's global mean and std.
    """

    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.attn = nn.Sequential(
            nn.Conv1d(channels * 3, bottleneck, 1),
            nn.ReLU(),
            nn.BatchNorm1d(bottleneck),
            nn.Tanh(),
            nn.Conv1d(bottleneck, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        mean = x.mean(dim=-1, keepdim=True).expand(-1, -1, t)
        std = torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False).clamp(min=1e-5)).expand(
            -1, -1, t
        )
        w = torch.softmax(self.attn(torch.cat([x, mean, std], dim=1)), dim=-1)
        mu = (x * w).sum(dim=-1)
        sg = torch.sqrt(
            (((x**2) * w).sum(dim=-1) - mu**2).clamp(min=1e-5)
        )  # clamp before sqrt: no NaN
        return torch.cat([mu, sg], dim=-1)
