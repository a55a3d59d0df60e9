"""non-finite: entries where z or a (forward) or ∂L/∂a (backward) was NaN or ±Inf."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from neurodiag.stats.base import StateSpec
from neurodiag.stats.statistic import Array, Column, Computed, SiteContext, Statistic, Threshold


class NonFiniteEntries(Statistic):
    """Counted, never dropped silently: every other statistic leaves these entries out."""

    name = "nonfinite"
    states = (StateSpec("nonfinite", "sum", per_neuron=False, count=True),)
    columns = (
        Column(
            "nonfinite",
            "int64",
            "count",
            "count of entries where z or a, or ∂L/∂a, was NaN or ±Inf",
            unhealthy="high",
            threshold=Threshold("max_nonfinite", "max", default=0, integer=True),
            regression="increase",
            title="non-\nfinite",
        ),
    )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        return Computed({"nonfinite": states["nonfinite"].astype(np.int64)})
