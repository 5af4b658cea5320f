"""ResNet with statistics pooling (the iterative paper's encoder family)."""

from __future__ import annotations

import torch
from torch import nn

from raysv.models.pooling import stats_pool


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNetEncoder(nn.Module):
    """``(B, T, n_mels) -> (B, embed_dim)``.

    A 2-D ResNet over (frequency, time); the frequency axis is folded into
    channels before statistics pooling over time. Defaults are a thin
    ResNet-34 (channels 32-256, blocks 3-4-6-3, 512-dim), as in the iterative paper.
    """

    def __init__(
        self,
        n_mels: int = 40,
        channels: tuple[int, ...] | list[int] = (32, 64, 128, 256),
        blocks: tuple[int, ...] | list[int] = (3, 4, 6, 3),
        embed_dim: int = 512,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU()
        )
        layers = []
        cin = channels[0]
        for i, (c, n) in enumerate(zip(channels, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c
        self.layers = nn.Sequential(*layers)
        freq = n_mels
        for _ in range(len(channels) - 1):
            freq = (freq + 1) // 2
        self.proj = nn.Linear(2 * cin * freq, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.stem(x.transpose(1, 2).unsqueeze(1)))  # (B, C, F, T)
        y = y.flatten(1, 2)  # (B, C*F, T)
        return self.proj(stats_pool(y))
