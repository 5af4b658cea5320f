"""ECAPA-TDNN (Desplanques et al., 2020), as used by the LGL paper: C = 512 or 1024, 192-dim.

As in the paper: each SE-Res2 block's input is the sum of the stem's output and
every earlier block's output (``block_input: sum``), and the multi-layer feature
aggregation concatenates the three blocks' outputs into a 1536-wide layer at
C = 512 and C = 1024 (``mfa_channels``; small CPU sizes keep 3C, e.g. 144 at
C = 48). Remaining differences from the paper: attentive statistics pooling
without the global-context input (time mean and std appended to each frame),
and the ReLU before batch norm order of every conv. Checkpoints written before
this (format ``raysv-encoder/1``) chained the blocks (``block_input: chain``)
and load as they were trained.
"""

from __future__ import annotations

import torch
from torch import nn

from raysv.models.pooling import AttentiveStatsPool


class SE(nn.Module):
    """Squeeze-excitation over channels of ``(B, C, T)``."""

    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv1d(channels, bottleneck, 1),
            nn.ReLU(),
            nn.Conv1d(bottleneck, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=-1, keepdim=True))


class SERes2Block(nn.Module):
    """1x1 conv -> Res2 dilated conv (scale groups) -> 1x1 conv -> SE, with a residual."""

    def __init__(self, channels: int, dilation: int, scale: int = 8):
        super().__init__()
        if channels % scale:
            raise ValueError(f"ECAPA channels ({channels}) must be divisible by scale ({scale})")
        width = channels // scale
        self.scale = scale
        self.pre = nn.Sequential(
            nn.Conv1d(channels, channels, 1), nn.ReLU(), nn.BatchNorm1d(channels)
        )
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation),
                nn.ReLU(),
                nn.BatchNorm1d(width),
            )
            for _ in range(scale - 1)
        )
        self.post = nn.Sequential(
            nn.Conv1d(channels, channels, 1), nn.ReLU(), nn.BatchNorm1d(channels)
        )
        self.se = SE(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(self.pre(x), self.scale, dim=1)
        outs = [parts[0]]
        y = None
        for i, conv in enumerate(self.convs):
            y = conv(parts[i + 1] if y is None else parts[i + 1] + y)
            outs.append(y)
        return x + self.se(self.post(torch.cat(outs, dim=1)))


class ECAPATDNN(nn.Module):
    """``(B, T, n_mels) -> (B, embed_dim)``.

    Conv(k=5) -> 3 SE-Res2 blocks (dilations 2, 3, 4) -> multi-layer feature
    aggregation -> attentive statistics pooling -> BN -> linear -> BN.
    ``block_input``: ``sum`` (the paper: a block sees the stem's output plus every
    earlier block's) or ``chain`` (each block sees the previous one's output; raysv
    before format 2). ``mfa_channels``: width of the aggregation layer; default
    ``min(3 C, 1536)`` (the paper's 1536 at C = 512 and 1024).
    """

    def __init__(
        self,
        n_mels: int = 80,
        channels: int = 512,
        embed_dim: int = 192,
        scale: int = 8,
        attn_bottleneck: int = 128,
        block_input: str = "sum",
        mfa_channels: int | None = None,
    ):
        super().__init__()
        if block_input not in ("sum", "chain"):
            raise ValueError(f"block_input must be sum or chain, got {block_input!r}")
        self.block_input = block_input
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels, channels, 5, padding=2), nn.ReLU(), nn.BatchNorm1d(channels)
        )
        self.blocks = nn.ModuleList(SERes2Block(channels, d, scale) for d in (2, 3, 4))
        mfa = mfa_channels or min(3 * channels, 1536)
        self.mfa = nn.Sequential(nn.Conv1d(3 * channels, mfa, 1), nn.ReLU())
        self.pool = AttentiveStatsPool(mfa, attn_bottleneck)
        self.bn_pool = nn.BatchNorm1d(2 * mfa)
        self.fc = nn.Linear(2 * mfa, embed_dim)
        self.bn_out = nn.BatchNorm1d(embed_dim)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x.transpose(1, 2))
        feats: list[torch.Tensor] = []
        y = stem
        for block in self.blocks:
            if self.block_input == "sum" and feats:
                y = stem + sum(feats)
            y = block(y)
            feats.append(y)
        y = self.mfa(torch.cat(feats, dim=1))
        return self.bn_out(self.fc(self.bn_pool(self.pool(y))))
