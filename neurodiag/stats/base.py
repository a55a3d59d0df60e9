"""Streaming accumulators whose states are declared with their cross-batch/cross-rank reduction.

As in torchmetrics, each statistic only declares its states (``add_state(name, default,
reduce)``) and writes ``update``; merging two accumulators (batches, ranks) is written once here.
There is no "mean" state: means are kept as sums and counts and divided at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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


class Accumulator:
    """Base class: fixed-shape tensor states, each with a declared reduction."""

    def __init__(self) -> None:
        self._reductions: dict[str, Reduce] = {}

    def add_state(self, name: str, default: Tensor, reduce: Reduce) -> None:
        if reduce not in _MERGE:
            raise ValueError(f"reduce must be one of {sorted(_MERGE)}, got {reduce!r}")
        self._reductions[name] = reduce
        setattr(self, name, default)

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
