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

import math

import torch
from torch import Tensor

from neurodiag.stats.base import StateSpec
from neurodiag.stats.bundle import SiteStats
from neurodiag.stats.reductions import (
    DerivativeFn,
    ForwardReductions,
    GradReductions,
    exact_grad,
    step_shortcut,
    traced_forward,
)

_FIELDS = frozenset(ForwardReductions.__slots__) | frozenset(GradReductions.__slots__)


class TracedSiteStates:
    """The states ``SiteStats`` folds per call, of one site, as fixed tensors."""

    def __init__(self, stats: SiteStats, derivative: DerivativeFn, step: bool) -> None:
        self.derivative = derivative
        self.step = step_shortcut(step, stats.config.eps)  # as every measuring path decides
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


class PackedSiteStates:
    """``TracedSiteStates`` for the usual sites: each reduction's states packed in one tensor.

    Every tensor and every Python value a traced hook reads becomes a Dynamo guard, checked
    whenever the compiled step is entered: ~130 per site with one tensor per state and the
    specs looked up per call (50 sites: ~1 ms per step on a CPU). Here a site keeps one float64
    tensor per reduction — (sums, maxima, minima) of the forward, the sums of the gradient — and
    tuples of field names; the non-finite count is kept per neuron (positions − finite ones) as
    one more row of the sums and added up when drained. Sites with a per-call statistic, the
    Gram matrix or states of another shape use ``TracedSiteStates``.
    """

    _SUMS = ("finite_positions", "active_entries", "sum_abs_act")
    _MAXES = ("max_abs_act", "max_abs_deriv")
    _GRAD_SUMS = ("grad_finite_positions", "sum_abs_grad")

    def __init__(self, stats: SiteStats, derivative: DerivativeFn, step: bool) -> None:
        specs = stats.store.specs
        self.derivative = derivative
        self.step = step_shortcut(step, stats.config.eps)  # as every measuring path decides
        self.eps = stats.config.eps
        self.dtype = stats.dtype
        # step sites derive max/min |σ'| from the totals when drained (as ``SiteStats.flush``)
        maxes, mins = (self._MAXES[:1], ()) if self.step else (self._MAXES, ("min_abs_deriv",))
        self.sum_names = tuple(n for n in self._SUMS if n in specs)
        self.max_names = tuple(n for n in maxes if n in specs)
        self.min_names = tuple(n for n in mins if n in specs)
        self.grad_names = tuple(n for n in self._GRAD_SUMS if n in specs)
        self.nonfinite = "nonfinite" in specs
        f, device = stats.neurons, stats.device
        rows = len(self.sum_names) + self.nonfinite
        self.sums = torch.zeros((max(rows, 1), f), dtype=torch.float64, device=device)
        self.maxes = torch.full(
            (max(len(self.max_names), 1), f), -math.inf, dtype=torch.float64, device=device
        )
        self.mins = torch.full(
            (max(len(self.min_names), 1), f), math.inf, dtype=torch.float64, device=device
        )
        grad_rows = len(self.grad_names) + self.nonfinite
        self.grad_sums = torch.zeros((max(grad_rows, 1), f), dtype=torch.float64, device=device)

    @classmethod
    def fits(cls, stats: SiteStats) -> bool:
        """The site's states are the usual ones (``traced_states`` picks this class then)."""
        specs = stats.store.specs
        known = set(cls._SUMS + cls._MAXES + cls._GRAD_SUMS) | {"min_abs_deriv", "nonfinite"}
        fields = {n for n in specs if n in _FIELDS}
        per_call = any(stat.per_call for stat in stats.statistics)
        counts = "nonfinite" not in specs or {"finite_positions", "grad_finite_positions"} <= set(
            specs
        )
        return fields <= known and not per_call and counts

    # -- traced --------------------------------------------------------------------------------
    def observe_forward(self, z: Tensor | None, a: Tensor, dims: tuple[int, ...]) -> None:
        """One call (traceable: tensor ops and in-place folds of three tensors)."""
        red = traced_forward(z, a, self.derivative, dims, self.eps, self.dtype, self.step)
        f64 = torch.float64
        rows = [getattr(red, n).to(f64) for n in self.sum_names]
        if self.nonfinite:  # per neuron: its positions in this call minus the finite ones
            rows.append(a.numel() // self.sums.shape[1] - red.finite_positions.to(f64))  # type: ignore[union-attr]
        if rows:
            self.sums.add_(torch.stack(rows))
        if self.max_names:
            high = torch.stack([getattr(red, n).to(f64) for n in self.max_names])
            self.maxes.copy_(torch.maximum(self.maxes, high))
        if self.min_names:
            low = torch.stack([getattr(red, n).to(f64) for n in self.min_names])
            self.mins.copy_(torch.minimum(self.mins, low))

    def observe_grad(self, grad: Tensor, dims: tuple[int, ...]) -> None:
        """One ∂L/∂a (traceable: AOTAutograd puts the hook into the compiled backward)."""
        red = exact_grad(grad, dims, self.dtype)
        f64 = torch.float64
        rows = [getattr(red, n).to(f64) for n in self.grad_names]
        if self.nonfinite:
            rows.append(grad.numel() // self.grad_sums.shape[1] - red.grad_finite_positions.to(f64))  # type: ignore[union-attr]
        if rows:
            self.grad_sums.add_(torch.stack(rows))

    # -- eager ---------------------------------------------------------------------------------
    def drain_into(self, stats: SiteStats) -> None:
        """Fold what the compiled calls measured into ``stats`` and start again from empty."""
        store = stats.store
        for names, packed, rest in (
            (self.sum_names, self.sums, self.nonfinite),
            (self.grad_names, self.grad_sums, self.nonfinite),
            (self.max_names, self.maxes, False),
            (self.min_names, self.mins, False),
        ):
            for i, name in enumerate(names):
                store.fold(name, packed[i].to(store[name].dtype))
            if rest:  # the per-neuron non-finite counts after the named rows
                store.fold("nonfinite", packed[len(names)].sum())
        self.sums.zero_()
        self.grad_sums.zero_()
        self.maxes.fill_(-math.inf)
        self.mins.fill_(math.inf)
        if self.step:
            stats.step = True


def traced_states(
    stats: SiteStats, derivative: DerivativeFn, step: bool
) -> TracedSiteStates | PackedSiteStates:
    """The compiled path's states for a site: packed where they are the usual ones."""
    if PackedSiteStates.fits(stats):
        return PackedSiteStates(stats, derivative, step)
    return TracedSiteStates(stats, derivative, step)
