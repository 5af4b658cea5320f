"""The dialogue paper's encoder: a multi-layer unidirectional LSTM and a linear layer."""

from __future__ import annotations

import torch
from torch import nn


class LSTMEncoder(nn.Module):
    """``(B, T, n_mels) -> (B, embed_dim)``: the last frame's top-layer state, projected.

    Defaults follow the paper: 3 layers of 768 units, a 256-unit linear layer.
    """

    def __init__(self, n_mels: int = 40, hidden: int = 768, layers: int = 3, embed_dim: int = 256):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, num_layers=layers, batch_first=True)
        self.proj = nn.Linear(hidden, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.proj(out[:, -1])
