"""``TracedSiteStates``: one site's forward states, updated by code Dynamo can trace.

Inside a ``torch.compile``d step a hook must not read the host (a graph break per site), must
not touch Python state that changes per call (a recompile per step), and must keep writing into
the same tensors (Dynamo reads them as graph inputs). So the compiled path folds each call's
``traced_forward`` reductions into a fixed set of tensors, mutated in place, and the Monitor
``drain``s them into the site's ``SiteStats`` when it reads a window; draining resets them in
place. Gradients too: the tensor hooks a traced forward registers become part of the compiled
backward (``exact_grad``: masks, no host read).
"""

from __future__ import annotations

import torch
from torch import Tensor

from neurodiag.stats.base import StateSpec
from neurodiag.stats.bundle import SiteStats
from neurodiag.stats.reductions import (
    DerivativeFn,
    ForwardReductions,
    GradReductions,
    exact_grad,
    traced_forward,
)

_FIELDS = frozenset(ForwardReductions.__slots__) | frozenset(GradReductions.__slots__)


class TracedSiteStates:
    """The states ``SiteStats`` folds per call, of one site, as fixed tensors."""

    def __init__(self, stats: SiteStats, derivative: DerivativeFn, step: bool) -> None:
        self.derivative = derivative
        self.step = step
        self.eps = stats.config.eps
        self.dtype = stats.dtype
        self.statistics = [stat for stat in stats.statistics if stat.per_call]
        names = [n for n in stats.store.specs if n in _FIELDS]
        names += [spec.name for stat in self.statistics for spec in stat.state_specs()]
        self.specs: dict[str, StateSpec] = {n: stats.store.specs[n] for n in dict.fromkeys(names)}
        # scalars as shape (1,): torch 2.13 loses in-place updates of a 0-d float64 tensor made
        # inside compiled code (Dynamo takes it for a Python float); (1,) ones are kept
        initial = {
            name: spec.initial(stats.neurons, stats.device, stats.dtype)
            for name, spec in self.specs.items()
        }
        #: each state's shape in ``SiteStats`` ((), (F,) or (F, F) for the rank's Gram matrix)
        self.shapes = {name: value.shape for name, value in initial.items()}
        self.values: dict[str, Tensor] = {
            name: value.reshape(1) if value.dim() == 0 else value for name, value in initial.items()
        }
        self.forward_names = [n for n in self.specs if n in ForwardReductions.__slots__]
        self.grad_names = [n for n in self.specs if n in GradReductions.__slots__]
        self.gram = "gram" in self.specs

    # -- traced --------------------------------------------------------------------------------
    def observe_forward(self, z: Tensor | None, a: Tensor, dims: tuple[int, ...]) -> None:
        """One call (traceable: tensor ops and in-place folds only)."""
        red = traced_forward(
            z, a, self.derivative, dims, self.eps, self.dtype, self.step, self.gram
        )
        for name in self.forward_names:
            value = getattr(red, name)
            if value is not None:
                self.fold(name, value)
        for stat in self.statistics:
            stat.update(self, red)

    def observe_grad(self, grad: Tensor, dims: tuple[int, ...]) -> None:
        """One ∂L/∂a (traceable: AOTAutograd puts the hook into the compiled backward)."""
        red = exact_grad(grad, dims, self.dtype)
        for name in self.grad_names:
            self.fold(name, getattr(red, name))

    def fold(self, name: str, value: Tensor | int) -> None:
        """``StateStore.fold`` for the per-call statistics, written in ops Dynamo traces."""
        state = self.values[name]
        reduce = self.specs[name].reduce
        if reduce == "sum":
            state.add_(value)
        elif reduce == "max":
            state.copy_(torch.maximum(state, torch.as_tensor(value, dtype=state.dtype)))
        else:
            state.copy_(torch.minimum(state, torch.as_tensor(value, dtype=state.dtype)))

    # -- eager ---------------------------------------------------------------------------------
    def drain_into(self, stats: SiteStats) -> None:
        """Fold what the compiled calls measured into ``stats`` and start again from empty.

        No host read: folding empty states changes nothing (0 sums, -inf maxima, +inf minima),
        so a site the window never reached is folded too rather than asked.
        """
        for name, value in self.values.items():
            stats.store.fold(name, value.reshape(self.shapes[name]))  # folded in place: no copy
            value.fill_(self.specs[name].empty())
        if self.step:  # max/min of σ' follow from the totals (empty when nothing was finite)
            stats.step = True
