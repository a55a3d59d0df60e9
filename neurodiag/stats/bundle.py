"""``SiteStats``: every registered statistic of one site, over one store of states.

The site's hooks call ``observe_forward`` / ``observe_grad``; each computes the call's
reductions once (``reductions``) and folds every declared state from them, once per state
however many statistics read it. ``summarize_sites`` reads all sites back with one transfer
per (device, dtype) and lets each statistic compute its columns on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from neurodiag.config import ScanConfig
from neurodiag.stats import native_fold
from neurodiag.stats.base import StateSpec, StateStore
from neurodiag.stats.reductions import (
    DerivativeFn,
    ForwardReductions,
    GradReductions,
    reduce_forward,
    reduce_grad,
    step_extremes,
    step_shortcut,
)
from neurodiag.stats.registry import STATISTICS, StatisticRegistry
from neurodiag.stats.statistic import Array, SiteContext, Statistic

_FORWARD_FIELDS = frozenset(ForwardReductions.__slots__)
_GRAD_FIELDS = frozenset(GradReductions.__slots__)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in at least float32 (bf16/fp16 sums would lose neurons to rounding)."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.promote_types(dtype, torch.float32)


def _fits(spec: object, neurons: int) -> bool:
    """A state may declare ``max_neurons`` (an O(neurons²) one: ``stats.rank``); a site with more
    neurons does not get it, and the statistics reading it give NaN there."""
    limit = getattr(spec, "max_neurons", None)
    return limit is None or neurons <= limit


@dataclass(frozen=True)
class SiteSummary:
    """Per-site numbers (the report row without names) and per-neuron tensors (CPU)."""

    row: dict[str, Any]
    neurons: dict[str, Tensor]


@dataclass(frozen=True)
class _Fitted:
    """The states of sites of one width, and which of them each call folds."""

    specs: tuple[StateSpec, ...]
    forward: list[str]
    grad: list[str]


class StatisticsLayout:
    """What the sites of one scan or Monitor share: the statistics (they keep nothing but the
    config) and, per width, the states they declare.

    Built once per scan, not per site: a site then costs its states alone (model (a)'s 50 sites
    made 11 statistics objects each, and every object a scan keeps makes the garbage
    collector's full passes come sooner).
    """

    def __init__(self, config: ScanConfig, registry: StatisticRegistry = STATISTICS) -> None:
        self.config = config
        self.registry = registry
        self.statistics: tuple[Statistic, ...] = tuple(cls(config) for cls in registry.values())
        self.per_call = tuple(stat for stat in self.statistics if stat.per_call)
        self._specs = [spec for stat in self.statistics for spec in stat.state_specs()]
        self._fitted: dict[int, _Fitted] = {}

    def fitted(self, neurons: int) -> _Fitted:
        """The states of a site of ``neurons`` (an O(neurons²) one may not fit: ``_fits``)."""
        fitted = self._fitted.get(neurons)
        if fitted is None:
            specs = tuple(spec for spec in self._specs if _fits(spec, neurons))
            names = dict.fromkeys(spec.name for spec in specs)  # in order, each once
            fitted = _Fitted(
                specs,
                [n for n in names if n in _FORWARD_FIELDS],
                [n for n in names if n in _GRAD_FIELDS],
            )
            self._fitted[neurons] = fitted
        return fitted


class SiteStats:
    """The statistics of one site, on the site's device, O(neurons) memory."""

    def __init__(
        self,
        neurons: int,
        device: torch.device,
        dtype: torch.dtype,
        config: ScanConfig,
        registry: StatisticRegistry = STATISTICS,
        layout: StatisticsLayout | None = None,
    ) -> None:
        if layout is None or layout.config is not config or layout.registry is not registry:
            layout = StatisticsLayout(config, registry)
        self.layout = layout
        self.neurons = neurons
        self.device = device
        self.dtype = state_dtype(dtype)
        self.config = config
        self.registry = registry
        self.statistics = layout.statistics
        fitted = layout.fitted(neurons)
        self.store = StateStore(fitted.specs, neurons, device, self.dtype)
        self._forward = fitted.forward
        #: The representation rank's Gram matrix is wanted (opt-in, O(neurons²) per call).
        self._gram = "gram" in self.store.specs
        self._grad = fitted.grad
        self._per_call = layout.per_call
        #: Some call took the step shortcut: max/min |σ'| are derived from the totals.
        self.step = False
        #: The C folds (CPU float32), None where they do not apply (``native_fold.bind``).
        self._native = (
            None
            if self._per_call  # (the Gram matrix is no field the folds take: ``bind`` says None)
            else native_fold.bind(self.store, self._forward, self._grad, config.eps)
        )

    @property
    def wants_grad(self) -> bool:
        return self.config.gradients

    def fresh(self) -> SiteStats:
        """Empty statistics of the same site (a new Monitor window)."""
        return SiteStats(
            self.neurons, self.device, self.dtype, self.config, self.registry, self.layout
        )

    # -- observations --------------------------------------------------------------------------
    def observe_forward(
        self,
        z: Tensor | None,
        a: Tensor,
        derivative: DerivativeFn,
        dims: tuple[int, ...],
        step: bool = False,
    ) -> None:
        """One call: pre-activation ``z`` (None if overwritten in place), activation ``a``."""
        native = self._native
        shortcut = step_shortcut(step, self.config.eps)
        if native is not None and native.forward(z, a, derivative, dims, shortcut):
            self.step = self.step or shortcut
            return
        red = reduce_forward(z, a, derivative, dims, self.config.eps, self.dtype, step, self._gram)
        if red.max_abs_deriv is None:
            self.step = True
        store = self.store
        store.fold_fields(red, self._forward)
        for stat in self._per_call:
            stat.update(store, red)

    def observe_grad(self, grad: Tensor, dims: tuple[int, ...]) -> None:
        """One ∂L/∂a of a call of this site."""
        native = self._native
        if native is not None and native.grad(grad, dims):
            return
        self.store.fold_fields(reduce_grad(grad, dims, self.dtype), self._grad)

    def step_folder(
        self, shape: torch.Size, dims: tuple[int, ...], from_z: bool
    ) -> Callable[[Tensor], bool] | None:
        """The hot path of a step site's calls of ``shape`` (``native_fold.NativeFold.folder``),
        or None: fold(x) with x the call's z (``from_z``) or its a is ``observe_forward(z, a,
        ..., step=True)`` in one C call; False (nothing folded): call ``observe_forward``."""
        native = self._native
        if native is None or not step_shortcut(True, self.config.eps):
            return None
        mode = native_fold.MODE_STEP_FROM_Z if from_z else native_fold.MODE_STEP
        fold = native.folder(shape, dims, mode)
        if fold is None:
            return None

        def fold_step(x: Tensor) -> bool:
            if fold(x):
                self.step = True
                return True
            return False

        return fold_step

    def grad_folder(
        self, shape: torch.Size, dims: tuple[int, ...]
    ) -> Callable[[Tensor], bool] | None:
        """The hot path of ``observe_grad`` for gradients of ``shape``, or None; fold(grad) False:
        call ``observe_grad``."""
        native = self._native
        return None if native is None else native.folder(shape, dims, native_fold.MODE_GRAD)

    # -- merging -------------------------------------------------------------------------------
    def flush(self) -> None:
        """Fold pending host counts; on step sites derive max/min |σ'| from the totals."""
        store = self.store
        store.flush()
        if self.step and "max_abs_deriv" in store and "min_abs_deriv" in store:
            _fold_step_extremes(dict(store.items()))

    def merge(self, other: SiteStats) -> None:
        self.flush()
        other.flush()
        self.store.merge(other.store)
        self.step = self.step or other.step

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        self.flush()
        self.store.all_reduce(group)

    def compute_group(self, states: Mapping[str, Array], delta_bars: Array) -> list[SiteSummary]:
        """The summaries of a group of sites like this one (same neurons, states and
        statistics) from their host ``states`` stacked along a leading sites axis."""
        count = len(delta_bars)
        ctx = SiteContext(self.neurons, delta_bars, self.config)
        row: dict[str, Any] = {"neurons": [self.neurons] * count}
        neurons: dict[str, Any] = {}
        for stat in self.statistics:
            computed = stat.compute(states, row, ctx)
            for name, values in computed.site.items():
                row[name] = _per_site(stat, name, values, count)
            for name, values in computed.neurons.items():
                neurons[name] = _per_neuron(stat, name, values, count)
        return [
            SiteSummary(
                {name: values[i] for name, values in row.items()},
                {
                    name: torch.from_numpy(np.ascontiguousarray(values[i]))
                    for name, values in neurons.items()
                    if values[i] is not None
                },
            )
            for i in range(count)
        ]


def _fold_step_extremes(states: Mapping[str, Tensor], steps: Tensor | None = None) -> None:
    """Fold the max/min |σ'| that the totals of step sites imply into their states, in place:
    a site's own states, or (``steps``: a bool per site) a group's stacked ones."""
    high, low = step_extremes(states["active_entries"], states["finite_positions"])
    for name, implied, fold in (
        ("max_abs_deriv", high, torch.maximum),
        ("min_abs_deriv", low, torch.minimum),
    ):
        state = states[name]
        folded = fold(state, implied.to(state.dtype))
        state.copy_(folded if steps is None else torch.where(steps.unsqueeze(-1), folded, state))


_GROUP_CONTRACT = (
    "compute sees the sites of a group at once, their states stacked along a leading sites "
    "axis (see docs/development.md)"
)


def _per_site(stat: Statistic, name: str, values: Any, count: int) -> list[Any]:
    """A column's S values as Python scalars (numpy's would leak into JSON and the tables)."""
    listed: list[Any] = []
    if isinstance(values, np.ndarray) and values.ndim == 1:
        listed = values.tolist()
    elif isinstance(values, (list, tuple)):
        listed = list(values)
    if len(listed) != count:
        raise TypeError(
            f"statistic {stat.name!r}: column {name!r} must have one value per site ({count}), "
            f"got {values!r}; {_GROUP_CONTRACT}"
        )
    return listed


def _per_neuron(stat: Statistic, name: str, values: Any, count: int) -> Any:
    """A per-neuron array of S sites (leading sites axis), or a list of S arrays or None."""
    if isinstance(values, np.ndarray):
        fits = values.ndim >= 2 and values.shape[0] == count
    else:
        fits = isinstance(values, (list, tuple)) and len(values) == count
    if not fits:
        shape = getattr(values, "shape", None)
        raise TypeError(
            f"statistic {stat.name!r}: per-neuron {name!r} must be (sites={count}, neurons, ...), "
            f"got {shape if shape is not None else type(values).__name__}; {_GROUP_CONTRACT}"
        )
    return values


def summarize_sites(
    sites: Sequence[SiteStats], delta_bars: Sequence[float | None]
) -> list[SiteSummary]:
    """The summaries of many sites with one device-to-host transfer per (device, dtype).

    A report reads every site; one ``cat`` and one copy instead of several per site keeps the
    transfer flat in the number of sites, and sites that share their neuron count, states and
    statistics are computed together (``compute_group``): one numpy op for 50 equal layers.
    """
    groups = _groups(sites)
    stacked = [_stacked_states(sites, group) for group in groups]
    host = _to_host([tensor for states in stacked for tensor in states.values()])
    summaries: list[SiteSummary | None] = [None] * len(sites)
    for group, states in zip(groups, stacked, strict=True):
        arrays = {name: host[id(tensor)] for name, tensor in states.items()}
        deltas = np.array(
            [math.nan if delta_bars[i] is None else delta_bars[i] for i in group],
            dtype=np.float64,
        )
        for i, summary in zip(group, sites[group[0]].compute_group(arrays, deltas), strict=True):
            summaries[i] = summary
    return [summary for summary in summaries if summary is not None]


def _groups(sites: Sequence[SiteStats]) -> list[list[int]]:
    """Indices of the sites a statistic can compute together: same width, statistics, config
    and states (names, shapes, dtypes, devices)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, stats in enumerate(sites):
        # (``items`` adds the pending host counts; a step site's max/min |σ'| are derived per
        # group by ``_stacked_states``, not by ``SiteStats.flush``)
        layout = tuple((t.device, t.dtype, t.shape) for _, t in stats.store.items())
        kinds = tuple(type(stat) for stat in stats.statistics)
        key = (stats.neurons, id(stats.config), kinds, tuple(stats.store.specs), layout)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _stacked_states(sites: Sequence[SiteStats], group: list[int]) -> dict[str, Tensor]:
    """Each state of a group's sites stacked along a leading sites axis, on their device (new
    tensors: the step sites' implied max/min |σ'| are folded into these, not into the sites)."""
    stores = [sites[i].store for i in group]
    stacked = {name: torch.stack([store[name] for store in stores]) for name in stores[0].specs}
    steps = [sites[i].step for i in group]
    if any(steps) and "max_abs_deriv" in stacked and "min_abs_deriv" in stacked:
        device = stacked["max_abs_deriv"].device
        _fold_step_extremes(stacked, torch.tensor(steps, device=device))
    return stacked


def _to_host(tensors: list[Tensor]) -> dict[int, Array]:
    """numpy copies of ``tensors`` by ``id``: one ``cat`` and one copy per (device, dtype)."""
    transfers: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for tensor in tensors:
        transfers.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    host: dict[int, Array] = {}
    for members in transfers.values():
        flat = torch.cat([t.reshape(-1) for t in members]).cpu().numpy()
        offset = 0
        for tensor in members:
            size = tensor.numel()
            host[id(tensor)] = flat[offset : offset + size].reshape(tensor.shape)
            offset += size
    return host
