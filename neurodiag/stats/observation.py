"""What one call of one activation site shows the statistics, computed lazily and at most once."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import torch
from torch import Tensor


def reduction_dims(ndim: int, feature_dim: int) -> tuple[int, ...]:
    """All dims but the neuron dim: the "positions" of each neuron."""
    if ndim == 0:
        return ()
    fd = feature_dim % ndim
    return tuple(i for i in range(ndim) if i != fd)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in at least float32 (bf16/fp16 sums would lose neurons to rounding)."""
    return torch.promote_types(dtype, torch.float32)


class ForwardObservation:
    """The pre-activation ``z`` (None when an in-place op overwrote it), the output ``a``.

    ``derivative`` computes σ'(z) elementwise from (z, a); it is only called if a statistic asks.
    """

    def __init__(
        self,
        z: Tensor | None,
        a: Tensor,
        derivative: Callable[[Tensor | None, Tensor], Tensor],
        dims: tuple[int, ...],
    ) -> None:
        self.z = z
        self.a = a
        self._derivative = derivative
        self.dims = dims
        self.dtype = state_dtype(a.dtype)

    @cached_property
    def positions(self) -> int:
        return _prod(self.a.shape, self.dims)

    @cached_property
    def abs_deriv(self) -> Tensor:
        return self._derivative(self.z, self.a).abs()

    @cached_property
    def batch_max_abs_deriv(self) -> Tensor:
        return _reduce(self.abs_deriv, self.dims, torch.amax).to(self.dtype)

    @cached_property
    def batch_min_abs_deriv(self) -> Tensor:
        return _reduce(self.abs_deriv, self.dims, torch.amin).to(self.dtype)

    @cached_property
    def batch_sum_abs_act(self) -> Tensor:
        if not self.dims:
            return self.a.abs().to(self.dtype)
        return self.a.abs().sum(self.dims, dtype=self.dtype)

    @cached_property
    def nonfinite(self) -> Tensor:
        finite = torch.isfinite(self.a)
        if self.z is not None:
            finite = finite & torch.isfinite(self.z)
        return finite.logical_not().sum()


def _prod(shape: torch.Size, dims: tuple[int, ...]) -> int:
    out = 1
    for i in dims:
        out *= shape[i]
    return out


def _reduce(x: Tensor, dims: tuple[int, ...], op: Callable[..., Tensor]) -> Tensor:
    return op(x, dim=dims) if dims else x
