"""τ-dormant % (Sokar et al. 2023): neurons whose normalised mean |a| is ≤ τ."""

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


class DormantNeurons(Statistic):
    """s_i = E|a_i| / mean_k E|a_k| over finite positions; dormant when s_i ≤ τ."""

    name = "dormant"
    states = (
        StateSpec("sum_abs_act", "sum"),
        StateSpec("finite_positions", "sum", count=True),
    )
    columns = (
        Column(
            "dormant_pct",
            "float64",
            "percent",
            "τ-dormant ratio: % of neurons with E|a_i| / mean_k E|a_k| ≤ τ",
            unhealthy="high",
            threshold=Threshold("max_dormant_pct", "max", percent=True),
            regression="points",
            title="dormant\n%",
        ),
    )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        total, finite = states["sum_abs_act"], states["finite_positions"]
        mean, scores, pct = dormant_scores(total, finite, self.config.tau)
        return Computed(
            {"dormant_pct": pct},
            {"mean_abs_activation": mean, "dormant_score": scores},
        )
