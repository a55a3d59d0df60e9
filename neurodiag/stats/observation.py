"""What one call of one activation site shows the statistics, computed lazily and at most once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Shortcuts:
    """Exact shortcuts an activation allows, so a site costs fewer full-size passes.

    ``monotone``: |σ'| is non-decreasing in z and the output is non-decreasing in z (ReLU,
    LeakyReLU with slope ≤ 1, ELU with α ≤ 1, CELU, softplus), so the max/min of |σ'| over the
    positions are σ' at max z / min z: reduce z (or a) first, then differentiate F values.
    ``nonnegative``: a ≥ 0 (ReLU, ReLU6, sigmoid, softplus), so Σ|a| is Σa.
    ``trust_z``: a is finite wherever z is (true of every registry activation), so counting
    non-finite z (or a, in place) counts every non-finite entry of the forward.
    """

    monotone: bool = False
    nonnegative: bool = False
    trust_z: bool = True


NO_SHORTCUTS = Shortcuts(trust_z=False)


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
        shortcuts: Shortcuts = NO_SHORTCUTS,
    ) -> None:
        self.z = z
        self.a = a
        self._derivative = derivative
        self.dims = dims
        self.shortcuts = shortcuts
        self.dtype = state_dtype(a.dtype)

    @cached_property
    def positions(self) -> int:
        return _prod(self.a.shape, self.dims)

    @cached_property
    def abs_deriv(self) -> Tensor:
        return self._derivative(self.z, self.a).abs()

    def _deriv_at(self, reduce: Callable[..., Tensor]) -> Tensor:
        """|σ'| at the per-neuron extreme of z (monotone activations only)."""
        if self.z is not None:
            return self._derivative(_reduce(self.z, self.dims, reduce), None).abs()  # type: ignore[arg-type]
        return self._derivative(None, _reduce(self.a, self.dims, reduce)).abs()

    @cached_property
    def batch_max_abs_deriv(self) -> Tensor:
        if self.shortcuts.monotone:
            return self._deriv_at(torch.amax).to(self.dtype)
        return _reduce(self.abs_deriv, self.dims, torch.amax).to(self.dtype)

    @cached_property
    def batch_min_abs_deriv(self) -> Tensor:
        if self.shortcuts.monotone:
            return self._deriv_at(torch.amin).to(self.dtype)
        return _reduce(self.abs_deriv, self.dims, torch.amin).to(self.dtype)

    @cached_property
    def batch_sum_abs_act(self) -> Tensor:
        magnitude = self.a if self.shortcuts.nonnegative else self.a.abs()
        if not self.dims:
            return magnitude.to(self.dtype)
        return magnitude.sum(self.dims, dtype=self.dtype)

    @cached_property
    def nonfinite(self) -> Tensor:
        if self.shortcuts.trust_z:
            return count_nonfinite(self.z if self.z is not None else self.a)
        count = count_nonfinite(self.a)
        return count if self.z is None else count + count_nonfinite(self.z)


def count_nonfinite(x: Tensor) -> Tensor:
    """Entries that are NaN or ±Inf, in two cheap passes: x − x is NaN exactly there."""
    return torch.count_nonzero(x - x)


def _prod(shape: torch.Size, dims: tuple[int, ...]) -> int:
    out = 1
    for i in dims:
        out *= shape[i]
    return out


def _reduce(x: Tensor, dims: tuple[int, ...], op: Callable[..., Tensor]) -> Tensor:
    return op(x, dim=dims) if dims else x
