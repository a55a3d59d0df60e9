"""The math of each statistic as pure functions on per-neuron tensors (tested by brute force)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
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


# -- the same math on host numpy arrays (summaries: ~1 µs per op instead of a torch dispatch) ------
# Callers run these under ``np.errstate(all="ignore")`` (non-finite neurons are expected input).
FloatArray = npt.NDArray[np.floating[Any]]
BoolArray = npt.NDArray[np.bool_]


def normalized_scores_np(mean_abs: FloatArray) -> FloatArray:
    """``normalized_scores`` on a numpy array (same dtype, same NaN/zero rules)."""
    finite = np.isfinite(mean_abs)
    count = int(np.count_nonzero(finite))
    total = mean_abs.sum(where=finite, dtype=mean_abs.dtype)
    norm = total / mean_abs.dtype.type(max(count, 1))
    scores = mean_abs / norm if norm > 0 else np.zeros_like(mean_abs)
    if count < finite.size:
        scores[~finite] = np.nan
    return scores


def percent_np(mask: BoolArray) -> float:
    """``percent`` on a numpy bool array."""
    n = mask.size
    return 100.0 * int(np.count_nonzero(mask)) / n if n else 0.0


def dormant_percent_np(scores: FloatArray, tau: float) -> float:
    """``dormant_percent`` on a numpy array (NaN scores are never dormant)."""
    return percent_np(scores <= tau)


def mean_abs_gradient_np(sum_abs_grad: FloatArray, grad_positions: int) -> float:
    """``mean_abs_gradient`` on a numpy array and a host count."""
    finite = np.isfinite(sum_abs_grad)
    n_finite = int(np.count_nonzero(finite))
    if grad_positions == 0 or n_finite == 0:
        return math.nan
    total = float(sum_abs_grad.sum(where=finite, dtype=sum_abs_grad.dtype))
    return total / (float(grad_positions) * n_finite)


def nan_min_np(x: FloatArray) -> float:
    """``nan_min`` on a numpy array."""
    kept = x[~np.isnan(x)]
    return float(kept.min()) if kept.size else math.nan
