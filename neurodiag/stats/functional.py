"""The math of each statistic as pure functions on per-neuron tensors (tested by brute force)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def dead_mask(max_abs_deriv: Tensor, eps: float) -> Tensor:
    """A neuron is dead when |σ'(z)| ≤ ε at every position seen, i.e. its max |σ'| ≤ ε."""
    return max_abs_deriv <= eps


def normalized_scores(mean_abs: Tensor) -> Tensor:
    """Sokar et al. (2023): s_i = E|x_i| / mean_k E|x_k|.

    Neurons with a non-finite mean are left out of the normaliser (their score is NaN). If every
    neuron is exactly zero the scores are all zero (every neuron is dormant), not NaN.
    """
    finite = torch.isfinite(mean_abs)
    count = finite.sum()
    total = torch.where(finite, mean_abs, torch.zeros_like(mean_abs)).sum()
    norm = total / count.clamp(min=1)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    scores = torch.where(norm > 0, mean_abs / safe, torch.zeros_like(mean_abs))
    return torch.where(finite, scores, torch.full_like(mean_abs, math.nan))


def percent(mask: Tensor) -> float:
    """Percentage of True entries (0.0 for an empty mask)."""
    n = mask.numel()
    return 100.0 * float(mask.sum()) / n if n else 0.0


def dormant_percent(scores: Tensor, tau: float) -> float:
    """% of neurons with score ≤ τ; NaN scores (non-finite neurons) are never dormant."""
    return percent(scores <= tau)


def mean_abs_gradient(sum_abs_grad: Tensor, grad_positions: Tensor) -> float:
    """MAG: mean of |∂L/∂a| over all positions and (finite) neurons; NaN when no gradient came."""
    finite = torch.isfinite(sum_abs_grad)
    n_finite = int(finite.sum())
    positions = float(grad_positions)
    if positions == 0 or n_finite == 0:
        return math.nan
    total = float(torch.where(finite, sum_abs_grad, torch.zeros_like(sum_abs_grad)).sum())
    return total / (positions * n_finite)


def nan_min(x: Tensor) -> float:
    """Minimum ignoring NaN (NaN if all are NaN or x is empty)."""
    finite = x[~torch.isnan(x)]
    return float(finite.min()) if finite.numel() else math.nan
