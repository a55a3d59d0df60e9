"""States declared with their cross-batch / cross-rank reduction, merged by one generic operation.

As in torchmetrics, a statistic only declares its states (``StateSpec(name, reduce, ...)``);
folding a call in, merging two stores (Monitor windows) and all-reducing across ranks are written
once here. There is no "mean" state: means are kept as sums and counts and divided at the end.

A "sum" state may be fed a host ``int`` (positions per call are known from the shape, never read
from the device): those are kept as a pending Python int and added to the tensor when the state is
read (``flush``), so counting positions costs no tensor op on the hot path.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

Reduce = Literal["sum", "min", "max"]

_DIST_OP = {
    "sum": dist.ReduceOp.SUM,
    "min": dist.ReduceOp.MIN,
    "max": dist.ReduceOp.MAX,
}
_EMPTY = {"sum": 0.0, "min": math.inf, "max": -math.inf}


@dataclass(frozen=True)
class StateSpec:
    """One accumulated state: per neuron ``(F,)`` or a scalar, a count (float64) or a value.

    Two statistics that declare the same name must declare the same spec: the state is then
    allocated and updated once and both read it.
    """

    name: str
    reduce: Reduce
    per_neuron: bool = True
    count: bool = False

    def __post_init__(self) -> None:
        if self.reduce not in _DIST_OP:
            raise ValueError(f"reduce must be one of {sorted(_DIST_OP)}, got {self.reduce!r}")
        if self.count and self.reduce != "sum":
            raise ValueError(f"state {self.name}: a count is reduced by sum")

    def empty(self) -> float:
        """The value of a state that has seen nothing (0, +inf for a min, -inf for a max)."""
        return 0.0 if self.count else _EMPTY[self.reduce]

    def initial(self, neurons: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        shape = (neurons,) if self.per_neuron else ()
        if self.count:  # float64: exact to 2**53, and per-call float counts add in directly
            return torch.zeros(shape, device=device, dtype=torch.float64)
        return torch.full(shape, _EMPTY[self.reduce], device=device, dtype=dtype)


def _bound_fold(state: Tensor, reduce: Reduce) -> Callable[[Tensor], object]:
    if reduce == "sum":
        return state.add_
    op = torch.maximum if reduce == "max" else torch.minimum
    return functools.partial(op, state, out=state)


class StateStore:
    """The tensor states of one site, each with its declared reduction."""

    def __init__(
        self, specs: Iterable[StateSpec], neurons: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.specs: dict[str, StateSpec] = {}
        for spec in specs:
            known = self.specs.get(spec.name)
            if known is not None and known != spec:
                raise ValueError(f"state {spec.name!r} declared twice differently: {known}, {spec}")
            self.specs[spec.name] = spec
        self.neurons = neurons
        self.device = device
        self.dtype = dtype
        self._values = {n: s.initial(neurons, device, dtype) for n, s in self.specs.items()}
        self._pending: dict[str, int] = {}

    @functools.cached_property
    def _folds(self) -> dict[str, Callable[[Tensor], object]]:
        """The in-place fold of each state, bound once, when first needed: sites the C folds
        serve never fold through them (states are never replaced, only updated)."""
        return {
            name: _bound_fold(self._values[name], spec.reduce) for name, spec in self.specs.items()
        }

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def __deepcopy__(self, memo: dict[int, object]) -> StateStore:
        """A copy with its own states *and* its own folds: the bound ``add_`` of a sum state is
        a builtin method, which ``copy.deepcopy`` shares, so copied folds would write into the
        original's tensors (an EMA copy of a monitored model fed the Monitor). The copy binds
        its folds to its own states when it first folds."""
        copied = StateStore.__new__(StateStore)
        memo[id(self)] = copied
        for name, value in self.__dict__.items():
            if name != "_folds":
                setattr(copied, name, copy.deepcopy(value, memo))
        return copied

    def fold(self, name: str, value: Tensor | int) -> None:
        """Combine one call's ``value`` into state ``name`` with its reduction (in place)."""
        if isinstance(value, int):
            if self.specs[name].reduce != "sum":
                raise TypeError(f"state {name}: host ints are only summed")
            if value:
                self._pending[name] = self._pending.get(name, 0) + value
            return
        self._folds[name](value)

    def fold_fields(self, source: object, names: Iterable[str]) -> None:
        """``fold(name, source.name)`` for each name whose value is not None (the hot path)."""
        folds, pending = self._folds, self._pending
        for name in names:
            value = getattr(source, name)
            if value is None:
                continue
            if value.__class__ is int:
                if value:
                    pending[name] = pending.get(name, 0) + value
                continue
            folds[name](value)

    def flush(self) -> None:
        """Add the pending host ints to their tensors."""
        for name, value in self._pending.items():
            if value:
                self._values[name].add_(value)
        self._pending.clear()

    def __getitem__(self, name: str) -> Tensor:
        if self._pending:
            self.flush()
        return self._values[name]

    def items(self) -> list[tuple[str, Tensor]]:
        if self._pending:
            self.flush()
        return list(self._values.items())

    def merge(self, other: StateStore) -> None:
        """Fold ``other`` (same specs, same shapes) into self with each state's reduction."""
        self.flush()
        for name, value in other.items():
            self._folds[name](value)

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        """Reduce every state across the ranks of ``group`` in place (same op as ``merge``)."""
        for name, value in self.items():
            dist.all_reduce(value, op=_DIST_OP[self.specs[name].reduce], group=group)
