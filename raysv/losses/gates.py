"""Loss gates of Stage II: which samples with pseudo labels may train the network.

- ``none``: every sample trains.
- ``lgl`` (loss-gated learning): after warm-up epochs of ordinary training, a
  sample updates the network only if its loss is below a fixed ``tau``.
- ``dlg`` (dynamic loss gate): ``tau`` is chosen every epoch from the previous
  epoch's per-sample losses: a two-component Gaussian mixture is fitted to
  them and ``tau`` is where the low-loss component stops being the more
  probable one.
- ``dlg-lc``: as ``dlg``; in addition a rejected sample whose predicted class
  probability exceeds ``tau2`` is trained towards the predicted class
  (label correction).

The functions here are pure (tensors/arrays in, tensors/arrays out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GATES = ("none", "lgl", "dlg", "dlg-lc")


@dataclass
class GateDecision:
    """Per-sample outcome of a gate for one batch (all ``(B,)``).

    ``train``: the sample contributes to the loss; ``passed``: its loss is below
    tau; ``corrected``: rejected but relabelled (LC); ``labels``: the labels
    the loss uses (pseudo labels, or the predicted class where corrected).
    """

    train: torch.Tensor
    passed: torch.Tensor
    corrected: torch.Tensor
    labels: torch.Tensor


def decide(
    name: str,
    per_loss: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor | None,
    tau: float | None,
    tau2: float,
) -> GateDecision:
    """Apply gate ``name`` to ``per_loss (B,)`` with pseudo ``labels (B,)``.

    ``tau`` None means the gate is open (warm-up): every sample passes.
    ``probs (B, C)`` (class posteriors) is needed by ``dlg-lc`` only.
    """
    if name not in GATES:
        raise ValueError(f"unknown gate {name!r}; valid: {', '.join(GATES)}")
    per_loss = per_loss.detach()
    if name == "none" or tau is None:
        passed = torch.ones_like(per_loss, dtype=torch.bool)
    else:
        passed = per_loss < tau
    corrected = torch.zeros_like(passed)
    new_labels = labels
    if name == "dlg-lc" and tau is not None:
        if probs is None:
            raise ValueError("dlg-lc needs class probabilities")
        conf, pred = probs.detach().max(dim=1)
        corrected = ~passed & (conf > tau2)
        new_labels = torch.where(corrected, pred, labels)
    return GateDecision(passed | corrected, passed, corrected, new_labels)


def gated_mean(per_loss: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_loss (B,)`` over samples with ``train`` set; 0 (with a graph) if none."""
    w = train.to(per_loss.dtype)
    return (per_loss * w).sum() / w.sum().clamp(min=1.0)


def mixture_threshold(losses: np.ndarray, seed: int = 0, max_points: int = 200_000) -> float:
    """DLG's threshold from per-sample losses ``(n,)``.

    Fits a two-component 1-D Gaussian mixture (scikit-learn) and returns the
    smallest loss at which the high-loss component becomes the more probable
    one (posterior of the low-loss component < 0.5), searched on a grid over
    the observed range. If the mixture is degenerate (one component, or the
    low-loss component never loses), returns ``inf``: the gate stays open.
    At most ``max_points`` losses (a seeded sample) are used for the fit.
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(losses, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.shape[0] < 10 or np.ptp(x) < 1e-8:
        return float("inf")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_points:
        x = rng.choice(x, max_points, replace=False)
    gmm = GaussianMixture(2, random_state=seed, reg_covar=1e-6).fit(x[:, None])
    low = int(np.argmin(gmm.means_[:, 0]))
    grid = np.linspace(float(gmm.means_[low, 0]), float(x.max()), 512)
    post = gmm.predict_proba(grid[:, None])[:, low]
    above = np.flatnonzero(post < 0.5)
    if above.size == 0:
        return float("inf")
    return float(grid[above[0]])
