"""What a statistic is: its states, how they update, how they compute, and how its columns read.

One statistic is one ``Statistic`` subclass in one file (see ``neurodiag/stats/registry.py``).
It declares

* ``states``: the accumulated states with their reductions (``StateSpec``). A state named after a
  field of ``ForwardReductions`` / ``GradReductions`` is updated from that field on every call,
  once per site even when several statistics declare it; a statistic that needs something else
  per call overrides ``update``;
* ``compute``: per-site values (one per column) and per-neuron arrays from the states, on the host
  (numpy: a report summarises every site, torch dispatch per tiny op would cost more than the scan).
  It computes a *group* of sites at once: sites with the same neuron count and states are stacked,
  so each state arrives with a leading sites axis (``(S, F)`` per neuron, ``(S,)`` per site) and
  each column is returned as ``S`` values. A report on 50 layers of equal width is then one numpy
  op per step instead of fifty, and a statistic reads the same whether it sees one site or many;
* ``columns``: the metadata every renderer, ``check`` threshold and baseline derives from.

Everything non-finite is already out of the states (``reductions``): compute divides by the
finite counts and never sees a NaN it did not make itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from neurodiag.config import ScanConfig
from neurodiag.stats.base import StateSpec

Array = npt.NDArray[Any]
Unhealthy = Literal["high", "low"] | None


@dataclass(frozen=True)
class Threshold:
    """A ``check`` limit on a column: key (config and flag name), which side fails, its range."""

    key: str
    bound: Literal["max", "min"]
    default: float | int | None = None
    integer: bool = False
    percent: bool = False

    @property
    def flag(self) -> str:
        """The CLI flag for this key (``max_dead_pct`` -> ``--max-dead-pct``)."""
        return "--" + self.key.replace("_", "-")

    def expected(self) -> str:
        """What a value must be, as told to the user in an error message."""
        if self.integer:
            return "a non-negative integer"
        if self.percent:
            return "a percentage between 0 and 100"
        return "a non-negative number"


@dataclass(frozen=True)
class Column:
    """One report column: its name, type, unit, meaning and which direction is unhealthy.

    ``unit``: "percent" (0-100, one decimal), "count" (integer), "value" (scientific) or "flag".
    ``unhealthy``: "high" / "low" (a regression is a rise / a fall), or None (not judged).
    ``gradient``: the value needs a backward (NaN in a forward-only scan).
    ``bernstein_only``: empty, meaning "does not apply", off Bernstein sites.
    ``regression``: how a baseline compares it: "points" (percentage points, absolute),
    "factor" (a fall by more than the factor), "increase" (any rise), or None (not compared).
    ``table``: False keeps an identity column out of the terminal table.
    """

    name: str
    dtype: Literal["float64", "int64", "Int64", "object"]  # Int64: an integer that may be absent
    unit: Literal["percent", "count", "value", "flag"]
    help: str
    unhealthy: Unhealthy = None
    threshold: Threshold | None = None
    gradient: bool = False
    bernstein_only: bool = False
    regression: Literal["points", "factor", "increase"] | None = None
    title: str = ""
    align: Literal["left", "right", "center"] = "right"
    #: shown in the terminal table (False: CSV, JSON and Markdown only, to keep it narrow)
    table: bool = True

    @property
    def header(self) -> str:
        """The table header: the title if one is given, else the name."""
        return self.title or self.name


@dataclass(frozen=True)
class SiteContext:
    """What a statistic may know of its group of sites besides their states: the neuron count
    they share, each site's δ̄ (``(S,)`` float64, NaN off Bernstein sites) and the config."""

    neurons: int
    delta_bar: Array
    config: ScanConfig

    @property
    def sites(self) -> int:
        """S, the number of sites in the group."""
        return len(self.delta_bar)


@dataclass
class Computed:
    """What ``compute`` returns for a group of S sites: per column, S values (an array, or a
    list where a value may be None); per name, a per-neuron array with the leading sites axis
    (or a list of S arrays, None where a site has none)."""

    site: dict[str, Any] = field(default_factory=dict)
    neurons: dict[str, Array | list[Array | None]] = field(default_factory=dict)


class Statistic:
    """Base class of a statistic; subclasses are registered in ``neurodiag.stats.registry``.

    ``observes`` says which observations feed it (forward, gradient, both, or none: a statistic
    computed from other columns). ``needs_gradients`` ones are skipped in a forward-only scan.
    """

    name: ClassVar[str]
    states: ClassVar[tuple[StateSpec, ...]] = ()
    columns: ClassVar[tuple[Column, ...]] = ()
    needs_gradients: ClassVar[bool] = False

    def __init__(self, config: ScanConfig) -> None:
        self.config = config

    def state_specs(self) -> tuple[StateSpec, ...]:
        """The states this statistic needs under ``self.config`` (default: ``states``)."""
        return self.states

    @property
    def per_call(self) -> bool:
        """True when ``update`` must run on every call (work beyond folding reductions)."""
        return False

    def update(self, store: Any, reductions: Any) -> None:
        """Per-call work for states that are not plain reductions (``per_call`` statistics)."""

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        """The columns of a group of sites: ``states`` stacked along a leading sites axis,
        ``row`` the columns of the statistics computed before (S values each)."""
        raise NotImplementedError


def finite_mean(total: Array, count: Array) -> Array:
    """Per-neuron mean over finite positions, in float64; NaN where a neuron had none.

    float64 because float32 sums of denormal activations (~1e-40, random-init MobileViT or
    EfficientNet) lose their last digits when divided in float32, or underflow to zero.
    """
    # no np.errstate (a third of the cost): the divisor is >= 1, so nothing here can warn
    return np.where(count > 0, total.astype(np.float64) / np.maximum(count, 1), np.nan)


def percent_of(mask: Array, measured: Array) -> Array:
    """Per site (last axis: neurons), % of measured neurons where ``mask`` holds; NaN where no
    neuron was measured."""
    n = np.count_nonzero(measured, axis=-1)
    hits = np.count_nonzero(mask & measured, axis=-1)
    return np.where(n > 0, 100.0 * hits / np.maximum(n, 1), np.nan)


def normalized_scores(mean_abs: Array) -> Array:
    """Sokar et al. (2023): s_i = E|x_i| / mean_k E|x_k| over the neurons (last axis) with a
    finite mean.

    A neuron without a finite mean has score NaN (never dormant). If every measured neuron is
    exactly zero the scores are all zero (every neuron is dormant), not NaN. Computed in float64:
    in float32 a mean of denormal magnitude (~1e-40) divides to garbage or to zero, and a score
    whose mean is 1 then reads 100 % dormant.
    """
    mean_abs = np.asarray(mean_abs, dtype=np.float64)
    finite = np.isfinite(mean_abs)
    count = np.count_nonzero(finite, axis=-1, keepdims=True)
    total = mean_abs.sum(axis=-1, where=finite, keepdims=True)
    norm = total / np.maximum(count, 1)
    with np.errstate(all="ignore"):
        scores = np.where(norm > 0, mean_abs / norm, 0.0)
    return np.where(finite, scores, np.nan)


def dormant_scores(total: Array, count: Array, tau: float) -> tuple[Array, Array, Array]:
    """(mean per neuron, normalised scores, per site % of measured neurons with score ≤ τ).

    The τ-dormant rule of Sokar et al. (2023), shared by activations and gradients.
    """
    mean = finite_mean(total, count)
    scores = normalized_scores(mean)
    return mean, scores, percent_of(scores <= tau, count > 0)  # NaN scores are never dormant
