"""min |σ'|: the smallest local derivative over every finite entry (the paper's Fig. 1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from neurodiag.stats.base import StateSpec
from neurodiag.stats.statistic import Array, Column, Computed, SiteContext, Statistic, Threshold


class MinAbsDerivative(Statistic):
    """min over finite positions and neurons of |σ'(z)|; NaN when nothing finite was seen."""

    name = "min_deriv"
    states = (
        StateSpec("min_abs_deriv", "min"),
        StateSpec("finite_positions", "sum", count=True),
    )
    columns = (
        Column(
            "min_abs_deriv",
            "float64",
            "value",
            "min over all finite positions and neurons of |σ'(z)|",
            unhealthy="low",
            threshold=Threshold("min_deriv", "min"),
            title="min\n|σ'|",
        ),
    )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        lows = states["min_abs_deriv"]
        kept = (states["finite_positions"] > 0) & ~np.isnan(lows)
        least = np.min(lows, axis=-1, where=kept, initial=np.inf).astype(np.float64)
        value = np.where(kept.any(axis=-1), least, np.nan)
        return Computed({"min_abs_deriv": value}, {"min_abs_deriv": lows})
