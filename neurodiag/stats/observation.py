"""What one call of one activation site shows the statistics, computed lazily and at most once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from neurodiag.stats.passes import (
    ForwardSweep,
    count_nonfinite,
    derivative_extremes,
    finite_count,
    forward_sweep,
)

__all__ = [
    "NO_SHORTCUTS",
    "ForwardObservation",
    "Shortcuts",
    "count_nonfinite",
    "finite_count",
    "positions_of",
    "reduction_dims",
    "state_dtype",
]


def reduction_dims(ndim: int, feature_dim: int) -> tuple[int, ...]:
    """All dims but the neuron dim: the "positions" of each neuron."""
    if ndim == 0:
        return ()
    fd = feature_dim % ndim
    return tuple(i for i in range(ndim) if i != fd)


def positions_of(shape: torch.Size, dims: tuple[int, ...]) -> int:
    """Positions per neuron of a call: the product of the reduced dims' sizes."""
    out = 1
    for i in dims:
        out *= shape[i]
    return out


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in at least float32 (bf16/fp16 sums would lose neurons to rounding)."""
    return _STATE_DTYPES.get(dtype) or torch.promote_types(dtype, torch.float32)


_STATE_DTYPES = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}


@dataclass(frozen=True)
class Shortcuts:
    """Exact shortcuts an activation allows, so a site costs fewer full-size passes.

    ``monotone``: |σ'| is non-decreasing in z and the output is non-decreasing in z (ReLU,
    LeakyReLU with slope ≤ 1, ELU with α ≤ 1, CELU, softplus), so the max/min of |σ'| over the
    positions are σ' at max z / min z: reduce z (or a) first, then differentiate F values. A
    non-decreasing output also means σ' ≥ 0, so |σ'| = σ' (no ``abs``).
    ``nonnegative``: a ≥ 0 (ReLU, ReLU6, sigmoid, softplus), so Σ|a| is Σa.
    ``trust_z``: a is finite wherever z is (true of every registry activation), so counting
    non-finite z (or a, in place) counts every non-finite entry of the forward.
    ``step``: with ``monotone`` and ``nonnegative``, σ' is c·[x > 0] (ReLU): then the max of σ'
    over the positions is σ'(Σa) (a sum of values ≥ 0 is > 0 iff one of them is, and is NaN iff
    one of them is, as the max z would be), so the dead test reuses Σ|a| instead of a max pass.
    """

    monotone: bool = False
    nonnegative: bool = False
    trust_z: bool = True
    step: bool = False


NO_SHORTCUTS = Shortcuts(trust_z=False)


class ForwardObservation:
    """The pre-activation ``z`` (None when an in-place op overwrote it), the output ``a``.

    ``derivative`` computes σ'(z) elementwise from (z, a); it is only called if a statistic asks.
    The full-size work is done once, on first use, by one ``forward_sweep`` (Σ|a|, the per-neuron
    extremes the monotone shortcut needs, the non-finite count) and shared by the statistics.
    """

    __slots__ = (
        "_derivative",
        "_extremes",
        "_sweep",
        "a",
        "dims",
        "dtype",
        "shortcuts",
        "z",
    )

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
        self._extremes: tuple[Tensor, Tensor] | None = None
        self._sweep: ForwardSweep | None = None

    @property
    def positions(self) -> int:
        return positions_of(self.a.shape, self.dims)

    @property
    def derivative(self) -> Callable[[Tensor | None, Tensor], Tensor]:
        return self._derivative

    def step_sources(self) -> tuple[Tensor, Tensor] | None:
        """(Σa, min z or a) per neuron when ``Shortcuts.step`` applies to this call, else None.

        σ' of these is the call's max and min of σ' (see ``Shortcuts``); the derivative
        accumulators fold them lazily instead of differentiating every call.
        """
        shortcuts = self.shortcuts
        if not (shortcuts.step and shortcuts.monotone and shortcuts.nonnegative and self.dims):
            return None
        sweep = self.swept()
        assert sweep.sum_abs is not None and sweep.low is not None
        return sweep.sum_abs, sweep.low

    def swept(self) -> ForwardSweep:
        """The per-call reductions of the full-size tensors (computed once)."""
        if self._sweep is None:
            shortcuts = self.shortcuts
            monotone = shortcuts.monotone
            self._sweep = forward_sweep(
                magnitude=self.a,
                nonnegative=shortcuts.nonnegative,
                extremes=(self.z if self.z is not None else self.a) if monotone else None,
                want_high=monotone and not (shortcuts.step and shortcuts.nonnegative),
                counted=self.nonfinite_sources(),
                dims=self.dims,
                dtype=self.dtype,
                # monotone: min/max of z (or a) see every non-finite entry of it; the step
                # shortcut (ReLU) skips the max, and Σa sees +Inf instead
                reductions_cover=monotone and shortcuts.trust_z,
            )
        return self._sweep

    def deriv_extremes(self) -> tuple[Tensor, Tensor]:
        """(max, min) over the positions of |σ'| per neuron, in the state dtype."""
        if self._extremes is None:
            self._extremes = self._compute_extremes()
        return self._extremes

    def _compute_extremes(self) -> tuple[Tensor, Tensor]:
        dims = self.dims
        if self.shortcuts.monotone:
            # σ' at the per-neuron extremes of z (or a), one derivative call on the stacked
            # (2, F) values; σ' ≥ 0 for these activations, so no abs
            sweep = self.swept()
            low = sweep.low
            assert low is not None
            if sweep.high is not None:
                high = sweep.high
            else:  # the step shortcut: max σ' = σ'(Σa)
                assert sweep.sum_abs is not None
                high = sweep.sum_abs
                if low.dtype != high.dtype:
                    low = low.to(high.dtype)
            both = torch.stack((high, low))
            from_z = self.z is not None
            d = self._derivative(both, None) if from_z else self._derivative(None, both)  # type: ignore[arg-type]
        else:
            d = torch.stack(derivative_extremes(self._derivative, self.z, self.a, dims))
        if d.dtype != self.dtype:
            d = d.to(self.dtype)
        return d[0], d[1]

    @property
    def batch_max_abs_deriv(self) -> Tensor:
        return self.deriv_extremes()[0]

    @property
    def batch_min_abs_deriv(self) -> Tensor:
        return self.deriv_extremes()[1]

    @property
    def batch_sum_abs_act(self) -> Tensor:
        total = self.swept().sum_abs
        assert total is not None
        return total

    def nonfinite_sources(self) -> tuple[Tensor, ...]:
        """The tensors whose NaN/±Inf entries are counted (see ``Shortcuts.trust_z``)."""
        if self.shortcuts.trust_z:
            return (self.z if self.z is not None else self.a,)
        return (self.a,) if self.z is None else (self.a, self.z)

    @property
    def nonfinite(self) -> Tensor:
        """Count of non-finite entries of the sources (int64 scalar)."""
        sweep = self.swept()
        count = torch.full((), sweep.entries, dtype=torch.int64, device=self.a.device)
        for finite in sweep.finite:
            count = count - finite.to(torch.int64)
        for extra in sweep.nonfinite:
            count = count + extra
        return count
