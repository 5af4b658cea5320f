"""ECAPA-TDNN (Desplanques et al., 2020), as used by the LGL paper: C = 512 or 1024, 192-dim."""

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
    """

    def __init__(
        self,
        n_mels: int = 80,
        channels: int = 512,
        embed_dim: int = 192,
        scale: int = 8,
        attn_bottleneck: int = 128,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels, channels, 5, padding=2), nn.ReLU(), nn.BatchNorm1d(channels)
        )
        self.blocks = nn.ModuleList(SERes2Block(channels, d, scale) for d in (2, 3, 4))
        mfa = 3 * channels
        self.mfa = nn.Sequential(nn.Conv1d(mfa, mfa, 1), nn.ReLU())
        self.pool = AttentiveStatsPool(mfa, attn_bottleneck)
        self.bn_pool = nn.BatchNorm1d(2 * mfa)
        self.fc = nn.Linear(2 * mfa, embed_dim)
        self.bn_out = nn.BatchNorm1d(embed_dim)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x.transpose(1, 2))
        feats = []
        for block in self.blocks:
            y = block(y)
            feats.append(y)
        y = self.mfa(torch.cat(feats, dim=1))
        return self.bn_out(self.fc(self.bn_pool(self.pool(y))))
