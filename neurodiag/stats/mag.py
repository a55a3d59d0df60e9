"""MAG: the mean absolute gradient |∂L/∂a| over every finite entry of the site."""

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


class MeanAbsGradient(Statistic):
    """Σ|∂L/∂a| over finite entries / their number; NaN when no gradient reached the site."""

    name = "mag"
    needs_gradients = True
    states = (
        StateSpec("sum_abs_grad", "sum"),
        StateSpec("grad_finite_positions", "sum", count=True),
    )
    columns = (
        Column(
            "mag",
            "float64",
            "value",
            "mean absolute gradient: mean of |∂L/∂a| over every finite entry",
            unhealthy="low",
            threshold=Threshold("min_mag", "min"),
            gradient=True,
            regression="factor",
            title="mag",
        ),
    )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        total, count = states["sum_abs_grad"], states["grad_finite_positions"]
        entries = count.sum(axis=-1)
        with np.errstate(all="ignore"):
            mag = np.where(entries > 0, total.sum(axis=-1, dtype="float64") / entries, np.nan)
        return Computed({"mag": mag}, {"mean_abs_grad": finite_mean(total, count)})
