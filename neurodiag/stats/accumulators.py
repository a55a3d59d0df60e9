"""One accumulator per statistic; each declares its states and their reductions.

Forward statistics read a ``ForwardObservation``; gradient statistics read ∂L/∂a. All states are
per-neuron tensors of fixed shape (F,) or scalars, kept on the model's device: updating them never
synchronises with the host, and memory is O(neurons), never O(samples).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neurodiag.stats.base import Accumulator
from neurodiag.stats.observation import (
    ForwardObservation,
    count_nonfinite,
    reduction_dims,
    state_dtype,
)


def _zeros(neurons: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.zeros(neurons, device=device, dtype=dtype)


class _PerNeuron(Accumulator):
    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.neurons = neurons
        self.device = device
        self.dtype = dtype


class DerivativeMax(_PerNeuron):
    """max over positions of |σ'(z)| per neuron: a neuron is dead when it stays ≤ ε."""

    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(neurons, device, dtype)
        self.add_state(
            "max_abs_deriv", torch.full((neurons,), -math.inf, device=device, dtype=dtype), "max"
        )

    def update(self, obs: ForwardObservation) -> None:
        torch.maximum(self.max_abs_deriv, obs.batch_max_abs_deriv, out=self.max_abs_deriv)

    max_abs_deriv: Tensor


class DerivativeMin(_PerNeuron):
    """min over positions of |σ'(z)| per neuron: the paper's "minimum absolute derivative"."""

    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(neurons, device, dtype)
        self.add_state(
            "min_abs_deriv", torch.full((neurons,), math.inf, device=device, dtype=dtype), "min"
        )

    def update(self, obs: ForwardObservation) -> None:
        torch.minimum(self.min_abs_deriv, obs.batch_min_abs_deriv, out=self.min_abs_deriv)

    min_abs_deriv: Tensor


class ActivationMagnitude(_PerNeuron):
    """Σ|a| per neuron and the number of positions: E|a_i| for the τ-dormant score."""

    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(neurons, device, dtype)
        self.add_state("sum_abs_act", _zeros(neurons, device, dtype), "sum")
        self.add_state("positions", torch.zeros((), device=device, dtype=torch.int64), "sum")

    def update(self, obs: ForwardObservation) -> None:
        self.sum_abs_act.add_(obs.batch_sum_abs_act)
        self.positions.add_(obs.positions)

    sum_abs_act: Tensor
    positions: Tensor


class GradientMagnitude(_PerNeuron):
    """Σ|∂L/∂a| per neuron and the positions it came from: MAG and the GraMa-style score."""

    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(neurons, device, dtype)
        self.add_state("sum_abs_grad", _zeros(neurons, device, dtype), "sum")
        self.add_state("grad_positions", torch.zeros((), device=device, dtype=torch.int64), "sum")

    def update_grad(self, grad: Tensor, dims: tuple[int, ...]) -> None:
        g = grad.abs()
        self.sum_abs_grad.add_(g.sum(dims, dtype=self.dtype) if dims else g.to(self.dtype))
        positions = 1
        for i in dims:
            positions *= grad.shape[i]
        self.grad_positions.add_(positions)

    sum_abs_grad: Tensor
    grad_positions: Tensor


class NonFinite(Accumulator):
    """Count of entries where z or a (forward) or ∂L/∂a (backward) is NaN or ±Inf."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.add_state("count", torch.zeros((), device=device, dtype=torch.int64), "sum")

    def update(self, obs: ForwardObservation) -> None:
        self.count.add_(obs.nonfinite)

    def update_grad(self, grad: Tensor) -> None:
        self.count.add_(count_nonfinite(grad))

    count: Tensor


class BatchDead(_PerNeuron):
    """Σ over site calls of the per-call dead fraction: the paper's Figure 3 window."""

    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype, eps: float) -> None:
        super().__init__(neurons, device, dtype)
        self.eps = eps
        self.add_state("dead_fraction_sum", torch.zeros((), device=device, dtype=dtype), "sum")
        self.add_state("calls", torch.zeros((), device=device, dtype=torch.int64), "sum")

    def update(self, obs: ForwardObservation) -> None:
        dead = (obs.batch_max_abs_deriv <= self.eps).to(self.dtype).mean()
        self.dead_fraction_sum.add_(dead)
        self.calls.add_(1)

    dead_fraction_sum: Tensor
    calls: Tensor


__all__ = [
    "ActivationMagnitude",
    "BatchDead",
    "DerivativeMax",
    "DerivativeMin",
    "GradientMagnitude",
    "NonFinite",
    "reduction_dims",
    "state_dtype",
]
