"""gradient-dormant % (GraMa-style): the τ-dormant score on the mean |∂L/∂a| per neuron."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neurodiag.stats.base import StateSpec
from neurodiag.stats.statistic import (
    Array,
    Column,
    Computed,
    SiteContext,
    Statistic,
    Threshold,
    dormant_scores,
)


class GradDormantNeurons(Statistic):
    """s_i = E|g_i| / mean_k E|g_k| over finite gradient entries; dormant when s_i ≤ τ."""

    name = "grad_dormant"
    needs_gradients = True
    states = (
        StateSpec("sum_abs_grad", "sum"),
        StateSpec("grad_finite_positions", "sum", count=True),
    )
    columns = (
        Column(
            "grad_dormant_pct",
            "float64",
            "percent",
            "% of neurons with E|∂L/∂a_i| / mean_k E|∂L/∂a_k| ≤ τ",
            unhealthy="high",
            threshold=Threshold("max_grad_dormant_pct", "max", percent=True),
            gradient=True,
            regression="points",
            title="grad\ndormant %",
        ),
    )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        total, finite = states["sum_abs_grad"], states["grad_finite_positions"]
        _, scores, pct = dormant_scores(total, finite, self.config.tau)
        return Computed(
            {"grad_dormant_pct": pct},
            {"grad_score": scores},
        )
