"""Streaming accumulators whose states are declared with their cross-batch/cross-rank reduction.

As in torchmetrics, each statistic only declares its states (``add_state(name, default,
reduce)``) and writes ``update``; merging two accumulators (batches, ranks) is written once here.
There is no "mean" state: means are kept as sums and counts and divided at the end.

Lazy updates (``LazyState``, ``flush``): counts known on the host (positions, calls: shapes,
never tensor values) are kept as Python ints and small per-call results can be batched, then
folded into the tensor states whenever a state is read (attribute access, ``state()``, ``merge``,
``all_reduce``). The hot path spends fewer tensor ops, and every state is still a tensor with its
declared reduction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, overload

import torch
import torch.distributed as dist
from torch import Tensor

Reduce = Literal["sum", "min", "max"]

_MERGE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "sum": torch.add,
    "min": torch.minimum,
    "max": torch.maximum,
}
_DIST_OP = {
    "sum": dist.ReduceOp.SUM,
    "min": dist.ReduceOp.MIN,
    "max": dist.ReduceOp.MAX,
}


class LazyState:
    """Class-level declaration of a state that ``update`` feeds lazily (see ``Accumulator.flush``).

    A data descriptor: reading the attribute first folds the accumulator's pending updates in
    (``flush``), so ``acc.positions`` is always exact; the hot path writes to the raw value in
    ``acc.__dict__`` and marks the accumulator dirty. Assigning folds pending updates into the old
    value first, then replaces it.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> LazyState: ...

    @overload
    def __get__(self, obj: Accumulator, owner: type | None = None) -> Tensor: ...

    def __get__(self, obj: Accumulator | None, owner: type | None = None) -> Tensor | LazyState:
        if obj is None:
            return self
        if obj._dirty:
            obj.flush()
        value: Tensor = obj.__dict__[self.name]
        return value

    def __set__(self, obj: Accumulator, value: Tensor) -> None:
        if obj.__dict__.get("_dirty"):
            obj.flush()
        obj.__dict__[self.name] = value


class Accumulator:
    """Base class: fixed-shape tensor states, each with a declared reduction.

    Lazy updates: a subclass may keep part of an update pending (host ints such as position
    counts, which cost no tensor op, or small per-call tensors folded in batches) as long as it
    declares those states as ``LazyState()`` class attributes, sets ``_dirty`` when something is
    pending and folds everything in ``flush``. Every read of a state (attribute, ``state()``,
    ``merge``, ``all_reduce``) then sees exact values, and every state stays a tensor.
    """

    def __init__(self) -> None:
        self._reductions: dict[str, Reduce] = {}
        self._dirty = False

    def add_state(self, name: str, default: Tensor, reduce: Reduce) -> None:
        if reduce not in _MERGE:
            raise ValueError(f"reduce must be one of {sorted(_MERGE)}, got {reduce!r}")
        self._reductions[name] = reduce
        setattr(self, name, default)

    def flush(self) -> None:
        """Fold pending updates into the states (a no-op unless a subclass defers work)."""
        self._dirty = False

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self._reductions)

    def state(self, name: str) -> Tensor:
        value = getattr(self, name)
        assert isinstance(value, Tensor)
        return value

    def merge(self, other: Accumulator) -> None:
        """Fold ``other`` (same class, same shapes) into self with each state's reduction."""
        for name, reduce in self._reductions.items():
            setattr(self, name, _MERGE[reduce](self.state(name), other.state(name)))

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        """Reduce every state across the ranks of ``group`` in place (same op as ``merge``)."""
        for name, reduce in self._reductions.items():
            dist.all_reduce(self.state(name), op=_DIST_OP[reduce], group=group)
