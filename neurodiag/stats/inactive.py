"""inactive %: the layer's sparsity, % of (position × neuron) entries with |σ'(z)| ≤ ε.

torch-audit users know it as "zero fraction". Unlike dead % (a neuron inactive everywhere), it
counts every entry: a ReLU layer with half its outputs at zero is 50 % inactive and may have no
dead neuron at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from neurodiag.stats.base import StateSpec
from neurodiag.stats.statistic import Array, Column, Computed, SiteContext, Statistic, Threshold


class InactiveEntries(Statistic):
    """Σ(finite − active) / Σ finite over the site, and the fraction per neuron."""

    name = "inactive"
    states = (
        StateSpec("active_entries", "sum", count=True),
        StateSpec("finite_positions", "sum", count=True),
    )
    columns = (
        Column(
            "inactive_pct",
            "float64",
            "percent",
            "% of finite (position × neuron) entries with |σ'(z)| ≤ ε (sparsity)",
            unhealthy="high",
            threshold=Threshold("max_inactive_pct", "max", percent=True),
            regression="points",
            title="inactive\n%",
        ),
    )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        finite, active = states["finite_positions"], states["active_entries"]
        entries = finite.sum(axis=-1)
        with np.errstate(all="ignore"):
            share = 100.0 * (entries - active.sum(axis=-1)) / entries
            per_neuron = np.where(finite > 0, 1.0 - active / np.maximum(finite, 1), np.nan)
        pct = np.where(entries > 0, share, np.nan)
        return Computed({"inactive_pct": pct}, {"inactive_fraction": per_neuron})
