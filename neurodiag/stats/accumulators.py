"""One accumulator per statistic; each declares its states and their reductions.

Forward statistics read a ``ForwardObservation``; gradient statistics read ∂L/∂a. All states are
per-neuron tensors of fixed shape (F,) or scalars, kept on the model's device: updating them never
synchronises with the host, and memory is O(neurons), never O(samples).

Per-call updates are cheap on purpose (a site is measured at every call of every batch): host
counts (positions, calls, entries) stay Python ints, the finite counts of the non-finite test are
kept aside (scalars) and folded into the int64 count a batch at a time, and the step shortcut
applies σ' once per flush instead of once per call. Reading a state (attribute, ``state()``,
``merge``, ``all_reduce``) flushes first (``LazyState``), so what is read is always exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from neurodiag.stats.base import Accumulator, LazyState
from neurodiag.stats.observation import (
    ForwardObservation,
    positions_of,
    reduction_dims,
    state_dtype,
)
from neurodiag.stats.passes import ForwardSweep, count_nonfinite, finite_count, grad_sweep

#: Finite counts (float scalars) kept aside before they are folded into the int64 count.
_PENDING_COUNTS = 64


def _zeros(neurons: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.zeros(neurons, device=device, dtype=dtype)


def _count(device: torch.device) -> Tensor:
    return torch.zeros((), device=device, dtype=torch.int64)


class _PerNeuron(Accumulator):
    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.neurons = neurons
        self.device = device
        self.dtype = dtype


class _DerivativeExtreme(_PerNeuron):
    """Shared by DerivativeMax/DerivativeMin: the state, and the lazy path of the step shortcut.

    With ``Shortcuts.step`` (ReLU: σ' = [x > 0]) the per-call extreme of σ' is σ' of a per-neuron
    value the forward sweep computes anyway (Σa for the max, min z for the min), and σ' is
    non-decreasing, so σ'(extreme over calls) = extreme over calls of σ'. Those values are folded
    into one pending (F,) tensor (one op per call) and σ' is applied once per ``flush`` (any read
    of the state). NaN keeps its meaning: a call whose Σa is NaN contributed σ'(NaN) = 0 to the
    max, which changes nothing, so the max side skips NaN (``fmax``); the min side keeps it
    (``minimum``), and σ'(NaN) = 0 is what that call contributed to the min.
    """

    _name: str
    _empty: float

    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(neurons, device, dtype)
        self._pending: Tensor | None = None
        self._derivative: Callable[[Tensor | None, Tensor], Tensor] | None = None
        self._from_z = False
        default = torch.full((neurons,), self._empty, device=device, dtype=dtype)
        self.add_state(self._name, default, "max" if self._empty < 0 else "min")

    def defer(
        self, value: Tensor, derivative: Callable[[Tensor | None, Tensor], Tensor], from_z: bool
    ) -> None:
        """Fold in the per-neuron value σ' of which is this call's extreme (step shortcut).

        ``derivative`` is the call's σ', applied to (value, None) if ``from_z`` else (None, value).
        """
        if self._dirty and (derivative is not self._derivative or from_z != self._from_z):
            self.flush()
        pending = self._pending
        if pending is None:
            pending = self._pending = torch.full_like(value, self._empty, dtype=self.dtype)
        self._combine_op(pending, value, out=pending)
        self._derivative = derivative
        self._from_z = from_z
        self._dirty = True

    #: folds a call's value into the pending tensor (torch.fmax / torch.minimum)
    _combine_op: Callable[..., Tensor]

    def _fold(self, state: Tensor, value: Tensor) -> None:
        raise NotImplementedError

    def _raw(self) -> Tensor:
        if self._dirty:
            self.flush()
        value: Tensor = self.__dict__[self._name]
        return value

    def flush(self) -> None:
        was_dirty, self._dirty = self._dirty, False
        pending, derivative = self._pending, self._derivative
        if not was_dirty or pending is None or derivative is None:
            return
        d = derivative(pending, None) if self._from_z else derivative(None, pending)  # type: ignore[arg-type]
        self._fold(self.__dict__[self._name], d.to(self.dtype) if d.dtype != self.dtype else d)
        pending.fill_(self._empty)


class DerivativeMax(_DerivativeExtreme):
    """max over positions of |σ'(z)| per neuron: a neuron is dead when it stays ≤ ε."""

    _name = "max_abs_deriv"
    _empty = -math.inf

    def update(self, obs: ForwardObservation) -> None:
        step = obs.step_sources()
        if step is not None:
            self.defer(step[0], obs.derivative, obs.z is not None)
        else:
            self._fold(self._raw(), obs.batch_max_abs_deriv)

    _combine_op = torch.fmax

    def _fold(self, state: Tensor, value: Tensor) -> None:
        torch.maximum(state, value, out=state)

    max_abs_deriv = LazyState()


class DerivativeMin(_DerivativeExtreme):
    """min over positions of |σ'(z)| per neuron: the paper's "minimum absolute derivative"."""

    _name = "min_abs_deriv"
    _empty = math.inf

    def update(self, obs: ForwardObservation) -> None:
        step = obs.step_sources()
        if step is not None:
            self.defer(step[1], obs.derivative, obs.z is not None)
        else:
            self._fold(self._raw(), obs.batch_min_abs_deriv)

    _combine_op = torch.minimum

    def _fold(self, state: Tensor, value: Tensor) -> None:
        torch.minimum(state, value, out=state)

    min_abs_deriv = LazyState()


class ActivationMagnitude(_PerNeuron):
    """Σ|a| per neuron and the number of positions: E|a_i| for the τ-dormant score."""

    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(neurons, device, dtype)
        self._new_positions = 0
        self.add_state("sum_abs_act", _zeros(neurons, device, dtype), "sum")
        self.add_state("positions", _count(device), "sum")

    def update(self, obs: ForwardObservation) -> None:
        self.add(obs.batch_sum_abs_act, obs.positions)

    def add(self, sum_abs: Tensor, positions: int) -> None:
        """Add Σ|a| of one call (per neuron) over ``positions`` positions."""
        self.__dict__["sum_abs_act"].add_(sum_abs)
        self._new_positions += positions
        self._dirty = True

    def flush(self) -> None:
        self._dirty = False
        if self._new_positions:
            self.__dict__["positions"].add_(self._new_positions)
            self._new_positions = 0

    sum_abs_act: Tensor
    positions = LazyState()


class GradientMagnitude(_PerNeuron):
    """Σ|∂L/∂a| per neuron and the positions it came from: MAG and the GraMa-style score."""

    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(neurons, device, dtype)
        self._new_positions = 0
        self.add_state("sum_abs_grad", _zeros(neurons, device, dtype), "sum")
        self.add_state("grad_positions", _count(device), "sum")

    def update_grad(self, grad: Tensor, dims: tuple[int, ...]) -> None:
        self.update_sum(grad_sweep(grad, dims, self.dtype)[0], grad.shape, dims)

    def update_sum(self, sum_abs: Tensor, shape: torch.Size, dims: tuple[int, ...]) -> None:
        """Add Σ|∂L/∂a| of one call (per neuron, already reduced over ``dims`` of ``shape``)."""
        self.add_sum(sum_abs, positions_of(shape, dims))

    def add_sum(self, sum_abs: Tensor, positions: int) -> None:
        """``update_sum`` with the number of positions already known."""
        self.__dict__["sum_abs_grad"].add_(sum_abs)
        self._new_positions += positions
        self._dirty = True

    def flush(self) -> None:
        self._dirty = False
        if self._new_positions:
            self.__dict__["grad_positions"].add_(self._new_positions)
            self._new_positions = 0

    sum_abs_grad: Tensor
    grad_positions = LazyState()


class NonFinite(Accumulator):
    """Count of entries where z or a (forward) or ∂L/∂a (backward) is NaN or ±Inf.

    Counted as (entries − finite entries): the number of entries is a host int and the finite
    ones come from ``finite_count`` (one elementwise pass and one float reduction, exact) as
    integer-valued float scalars, converted to int64 before they are summed. Tensors too large
    for an exact float count use ``count_nonfinite`` directly.
    """

    _BATCH = _PENDING_COUNTS

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self._entries = 0
        self._finite: list[Tensor] = []
        self.add_state("count", _count(device), "sum")

    def update(self, obs: ForwardObservation) -> None:
        self.add_sweep(obs.swept())

    def add_sweep(self, sweep: ForwardSweep) -> None:
        """Count the non-finite entries a forward sweep found."""
        for nonfinite in sweep.nonfinite:
            self.add_nonfinite(nonfinite)
        if sweep.entries:
            self.add_finite(sweep.entries, sweep.finite)

    def update_grad(self, grad: Tensor) -> None:
        self.update_tensor(grad)

    def update_tensor(self, x: Tensor) -> None:
        """Count the NaN/±Inf entries of ``x``."""
        finite = finite_count(x)
        if finite is None:
            self.add_nonfinite(count_nonfinite(x))
        else:
            self.add_finite(x.numel(), (finite,))

    def add_finite(self, entries: int, finite: Sequence[Tensor]) -> None:
        """Count ``entries − Σ finite`` (host int, exact integer-valued float scalars)."""
        self._entries += entries
        pending = self._finite
        pending.extend(finite)
        self._dirty = True
        if len(pending) >= self._BATCH:
            self.flush()

    def add_finite_one(self, entries: int, finite: Tensor) -> None:
        """``add_finite`` of one tensor (the per-call hot path)."""
        self._entries += entries
        pending = self._finite
        pending.append(finite)
        self._dirty = True
        if len(pending) >= self._BATCH:
            self.flush()

    def add_nonfinite(self, count: Tensor) -> None:
        """Add an int64 count of NaN/±Inf entries."""
        self.__dict__["count"].add_(count)

    def flush(self) -> None:
        self._dirty = False
        count = self.__dict__["count"]
        if self._entries:
            count.add_(self._entries)
            self._entries = 0
        pending = self._finite
        if pending:
            # each part is an exact integer (≤ 2**24 in float32): convert before summing
            parts = pending[0].reshape(1) if len(pending) == 1 else torch.stack(pending)
            count.sub_(parts.to(torch.int64).sum())
            pending.clear()

    count = LazyState()


class BatchDead(_PerNeuron):
    """Σ over site calls of the per-call dead fraction: the paper's Figure 3 window."""

    def __init__(self, neurons: int, device: torch.device, dtype: torch.dtype, eps: float) -> None:
        super().__init__(neurons, device, dtype)
        self.eps = eps
        self._new_calls = 0
        self.add_state("dead_fraction_sum", torch.zeros((), device=device, dtype=dtype), "sum")
        self.add_state("calls", _count(device), "sum")

    def update(self, obs: ForwardObservation) -> None:
        dead = (obs.batch_max_abs_deriv <= self.eps).to(self.dtype).mean()
        self.dead_fraction_sum.add_(dead)
        self._new_calls += 1
        self._dirty = True

    def flush(self) -> None:
        self._dirty = False
        if self._new_calls:
            self.__dict__["calls"].add_(self._new_calls)
            self._new_calls = 0

    dead_fraction_sum: Tensor
    calls = LazyState()


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
