"""Mixture-of-experts activations measured per expert (issue 26.5).

Hugging Face keeps a layer's experts in one module (``MixtralExperts``: 3-D weights whose leading
dim is the expert, one ``act_fn`` for all of them). Its activation is called either once per expert
hit, in ascending expert id (``eager``), or once over all routed rows: sorted by expert
(``grouped_mm``) or in routing order (``batched_mm``). The recorder reads the routing
(``top_k_index``) as the experts module is called and gives each call's rows to the expert that
ran them, so a site is one expert's ``intermediate_size`` units, named ``experts.E.act_fn`` by its
expert id E (stable across batches), as if each expert had its own module. Other implementations,
or calls that do not match the routing, stay one merged site (the report says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

#: Implementations whose activation calls the routing explains (None: the eager forward).
_KNOWN = (None, "eager", "grouped_mm", "batched_mm")

#: One expert's share of an activation call: its id and its rows (None: the whole call).
Share = tuple[int, slice | Tensor | None]


def experts_size(module: nn.Module) -> int | None:
    """Number of experts of a Hugging Face experts module (3-D weights, leading dim the expert)."""
    count = getattr(module, "num_experts", None)
    if not isinstance(count, int) or count < 1:
        return None
    for param in module.parameters(recurse=False):
        if param.dim() == 3 and param.shape[0] == count:
            return count
    return None


@dataclass
class Routing:
    """The routing of one call of an experts module, and how many activation calls it has seen."""

    count: int
    impl: str | None
    ids: Tensor  # (S,) the expert of each routed row, in routing order
    calls: int = 0
    _hit: list[int] | None = field(default=None, repr=False)
    _counts: list[int] | None = field(default=None, repr=False)

    def counts(self) -> list[int]:
        if self._counts is None:
            valid = self.ids[self.ids < self.count]
            self._counts = torch.bincount(valid, minlength=self.count).tolist()
        return self._counts

    def shares(self, rows: int) -> list[Share] | None:
        """Which expert ran which rows of this activation call (None: not explained)."""
        call = self.calls
        self.calls += 1
        counts = self.counts()
        if self.impl in (None, "eager"):
            if self._hit is None:
                self._hit = [e for e, n in enumerate(counts) if n]
            if call < len(self._hit) and rows == counts[self._hit[call]]:
                return [(self._hit[call], None)]
            return None
        if call != 0 or rows != self.ids.numel():
            return None
        if self.impl == "grouped_mm":  # sorted by expert; dropped (sentinel) rows at the tail
            shares: list[Share] = []
            start = 0
            for expert, n in enumerate(counts):
                if n:
                    shares.append((expert, slice(start, start + n)))
                start += n
            return shares
        return [  # batched_mm: routing order
            (expert, (self.ids == expert).nonzero().squeeze(1))
            for expert, n in enumerate(counts)
            if n
        ]


def read_routing(
    module: nn.Module, count: int, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Routing | None:
    """The routing of this call of experts ``module``, if its implementation is one we know."""
    config = getattr(module, "config", None)
    impl = getattr(config, "_experts_implementation", None)
    if impl not in _KNOWN:
        return None
    index = args[1] if len(args) > 1 else kwargs.get("top_k_index")
    if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex():
        return None
    return Routing(count, impl, index.detach().reshape(-1))
