"""Massive activations (Sun et al. 2024): the largest |a| of a site, and its outlier neurons.

A neuron is massive when its max |a| over the scan is > ``MASSIVE_MIN`` (100) and at least
``MASSIVE_RATIO`` (1000) times the site's median |a|; ``massive`` counts them (0: none; the site
"has massive activations" when it is > 0, i.e. when its ``max_abs_activation`` passes the rule).

The median is the median over neurons of the per-neuron mean |a| (``sum_abs_act`` /
``finite_positions``, the τ-dormant statistic's states): a streaming median over every entry would
need the entries or a sketch per call, while the per-neuron means are already there, so the rule
costs one per-call reduction only (``max_abs_act``, the per-neuron max |a| over finite positions).
Sun et al.'s outliers are a few dims in a hidden state whose other entries are O(1): there the
median over neurons of the mean |a| and the median over entries are of the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from neurodiag.stats.base import StateSpec
from neurodiag.stats.statistic import (
    Array,
    Column,
    Computed,
    SiteContext,
    Statistic,
    Threshold,
    finite_mean,
)

#: max |a| above which an activation can be massive (Sun et al. 2024: "larger than 100").
MASSIVE_MIN = 100.0
#: ... and at least this many times the site's median |a| ("about 1,000 times").
MASSIVE_RATIO = 1000.0


def massive_neurons(peak: Array, mean_abs: Array, measured: Array) -> tuple[Array, Array]:
    """(which measured neurons are massive, each site's median |a|: the median over its
    measured neurons (last axis) of their mean |a|, NaN where none was measured)."""
    # unmeasured neurons sort last (+inf); np.median's own dispatch costs ~8x this sort
    values = np.sort(np.where(measured, mean_abs, np.inf), axis=-1)
    count = np.count_nonzero(measured, axis=-1, keepdims=True)
    mid = count // 2
    upper = np.take_along_axis(values, np.minimum(mid, values.shape[-1] - 1), axis=-1)
    lower = np.take_along_axis(values, np.maximum(mid - 1, 0), axis=-1)
    with np.errstate(invalid="ignore"):
        median = np.where(count % 2 == 1, upper, (lower + upper) / 2)
        median = np.where(count > 0, median, np.nan)
        massive = measured & (peak > MASSIVE_MIN) & (peak >= MASSIVE_RATIO * median)
    return massive, median[..., 0]


class MassiveActivations(Statistic):
    """max |a| per neuron over finite positions; massive neurons by Sun et al.'s rule."""

    name = "massive"
    states = (
        StateSpec("max_abs_act", "max"),
        StateSpec("sum_abs_act", "sum"),
        StateSpec("finite_positions", "sum", count=True),
    )
    columns = (
        Column(
            "max_abs_activation",
            "float64",
            "value",
            "max |a| over every finite entry of the site",
            unhealthy="high",
            threshold=Threshold("max_abs_activation", "max"),
            title="max\n|a|",
            table=False,  # CSV, JSON and Markdown: the terminal table keeps its width
        ),
        Column(
            "massive",
            "Int64",
            "count",
            f"massive neurons (Sun et al. 2024): max |a| > {MASSIVE_MIN:g} and ≥ "
            f"{MASSIVE_RATIO:g}× the site's median |a| (median over neurons of the mean |a|); "
            "0: none",
            unhealthy="high",
            threshold=Threshold("max_massive", "max", integer=True),
            table=False,
        ),
    )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        finite = states["finite_positions"]
        measured = finite > 0
        # abs: the ReLU shortcut may leave -0.0 for a neuron that was -0.0 everywhere
        peak = np.where(measured, np.abs(states["max_abs_act"].astype(np.float64)), np.nan)
        mean = finite_mean(states["sum_abs_act"], finite)
        massive, _ = massive_neurons(peak, mean, measured)
        any_measured: Array = np.any(measured, axis=-1)
        highest = np.max(peak, axis=-1, where=measured, initial=-np.inf)
        counts = np.count_nonzero(massive, axis=-1).tolist()
        return Computed(
            {
                "max_abs_activation": np.where(any_measured, highest, np.nan),
                "massive": [
                    c if m else None for c, m in zip(counts, any_measured.tolist(), strict=True)
                ],
            },
            {"max_abs_activation": peak, "massive": massive},
        )
