"""Additive angular margin softmax (AAM-softmax, ArcFace) over pseudo labels.

Logits are ``s * cos(theta_j)`` for every class j, with the target class's
replaced by ``s * cos(theta_y + m)``; the LGL paper uses m = 0.2, s = 30.
Per-sample losses are returned (not averaged) because the loss gates of
Stage II decide per sample whether it trains the network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AAMSoftmax(nn.Module):
    """Cosine classifier with an additive angular margin.

    Args:
        embed_dim: D, embedding size.
        n_classes: C, number of (pseudo) classes.
        margin: m in radians added to the target angle.
        scale: s, the logit scale.
    """

    def __init__(self, embed_dim: int, n_classes: int, margin: float = 0.2, scale: float = 30.0):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"AAM-softmax needs at least 2 classes, got {n_classes}")
        self.weight = nn.Parameter(torch.empty(n_classes, embed_dim))
        nn.init.xavier_normal_(self.weight, gain=1.0)
        self.margin, self.scale = float(margin), float(scale)
        # Beyond theta = pi - m, cos(theta + m) stops decreasing; CosFace-style
        # fallback keeps the target logit monotonic in theta there.
        self._cos_limit = math.cos(math.pi - self.margin)
        self._fallback = math.sin(math.pi - self.margin) * self.margin

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb (B, D) -> cos (B, C)`` between normalised embeddings and class weights."""
        return F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight, dim=1))

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``cos (B, C)``, ``labels (B,)`` -> scaled logits ``(B, C)`` with the margin on the target."""
        target = cos.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
        sin = torch.sqrt(1.0 - target * target)
        phi = target * math.cos(self.margin) - sin * math.sin(self.margin)
        phi = torch.where(target > self._cos_limit, phi, target - self._fallback)
        return self.scale * cos.scatter(1, labels[:, None], phi)

    def per_sample_loss(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the margin logits: ``(B,)``."""
        return F.cross_entropy(self.margin_logits(cos, labels), labels, reduction="none")

    def probabilities(self, cos: torch.Tensor) -> torch.Tensor:
        """Class posteriors without the margin, ``softmax(s * cos)``: ``(B, C)``."""
        return torch.softmax(self.scale * cos, dim=1)
