"""Soft rejection of multi-speaker dialogues (dialogue paper, eqs. 5-7).

Compactness ``C_i`` = mean pairwise cosine among dialogue i's M embeddings,
computed without gradient; weight ``w_i = sigmoid(T * (C_i - t))`` with a
learnable temperature T and a fixed threshold t.

Keeping the weights from collapsing. With T learnable, the plain weighted sum
``sum_i w_i * l_i`` can be lowered by driving every weight to zero (T grows
while most C_i < t), which silently stops learning. raysv does two things:

1. it normalises by the weights: ``L = sum_i w_i l_i / sum_i w_i``. Scaling all
   weights down no longer lowers the loss; T only changes *which* dialogues
   count, and the learning signal keeps its size;
2. it bounds T to ``(0, T_max)`` by parametrising ``T = T_max * sigmoid(r)``
   (default T_max = 20), so that the weights never become a hard 0/1
   selection of a few dialogues: for compactness spread over a range R, the
   effective sample size stays near ``2 / (T_max * R)`` of the batch or more.

``normalise=False`` gives the paper's plain sum (per utterance, averaged over
the batch), for comparison; the tests show its weights collapse and these don't.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def compactness(x: torch.Tensor) -> torch.Tensor:
    """``(N, M, D) -> (N,)``: mean pairwise cosine (j != k) within each group, detached."""
    with torch.no_grad():
        xn = F.normalize(x.float(), dim=-1)
        m = x.shape[1]
        gram = xn @ xn.transpose(1, 2)  # (N, M, M)
        return (gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)) / (m * (m - 1))


class Rejection(nn.Module):
    """Weights dialogues by compactness and combines per-utterance losses.

    Args:
        threshold: t, the compactness at which a dialogue gets weight 0.5.
        temperature: initial T.
        max_temperature: T_max, upper bound of T.
        learn_temperature: whether T is learnt (the paper) or fixed.
        normalise: divide by the sum of weights (see module docstring).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        temperature: float = 10.0,
        max_temperature: float = 20.0,
        learn_temperature: bool = True,
        normalise: bool = True,
    ):
        super().__init__()
        if not 0 < temperature < max_temperature:
            raise ValueError(
                f"need 0 < temperature < max_temperature, got {temperature}, {max_temperature}"
            )
        self.threshold = threshold
        self.max_temperature = max_temperature
        self.normalise = normalise
        raw = math.log(temperature / (max_temperature - temperature))  # inverse of T_max * sigmoid
        if learn_temperature:
            self.raw_t = nn.Parameter(torch.tensor(raw))
        else:
            self.register_buffer("raw_t", torch.tensor(raw))

    @property
    def temperature(self) -> torch.Tensor:
        return self.max_temperature * torch.sigmoid(self.raw_t)

    def weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, M, D) -> (w (N,), C (N,))``; w carries gradient to T only."""
        c = compactness(x)
        return torch.sigmoid(self.temperature * (c - self.threshold)), c

    def forward(
        self, losses: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Combine per-sample ``losses`` (N, Q) with weights from ``x`` (N, M, D).

        Returns ``(loss, w, C)``.
        """
        w, c = self.weights(x)
        per_group = losses.mean(dim=1)
        if self.normalise:
            loss = (w * per_group).sum() / w.sum().clamp(min=1e-8)
        else:
            loss = (w * per_group).mean()
        return loss, w, c
