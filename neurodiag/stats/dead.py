"""dead %: neurons whose |σ'(z)| ≤ ε at every finite position (they pass no gradient)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from neurodiag.stats.base import StateSpec
from neurodiag.stats.reductions import ForwardReductions
from neurodiag.stats.statistic import (
    Array,
    Column,
    Computed,
    SiteContext,
    Statistic,
    Threshold,
    percent_of,
)

_BATCH_STATES = (
    StateSpec("dead_fraction_sum", "sum", per_neuron=False),
    StateSpec("dead_calls", "sum", per_neuron=False, count=True),
)


class DeadNeurons(Statistic):
    """Dead over the whole scan (default), or the per-call dead fraction averaged over calls
    (``dead_window="batch"``, the paper's Fig. 3)."""

    name = "dead"
    states = (
        StateSpec("active_entries", "sum", count=True),
        StateSpec("finite_positions", "sum", count=True),
        StateSpec("max_abs_deriv", "max"),
    )
    columns = (
        Column(
            "dead_pct",
            "float64",
            "percent",
            "% of neurons with |σ'(z)| ≤ ε at every finite position of every batch",
            unhealthy="high",
            threshold=Threshold("max_dead_pct", "max", percent=True),
            regression="points",
            title="dead\n%",
        ),
    )

    def state_specs(self) -> tuple[StateSpec, ...]:
        batch = self.config.dead_window == "batch"
        return self.states + (_BATCH_STATES if batch else ())

    @property
    def per_call(self) -> bool:
        return self.config.dead_window == "batch"

    def update(self, store: Any, reductions: ForwardReductions) -> None:
        active = reductions.active_entries
        finite = reductions.finite_positions
        if isinstance(finite, int):
            measured = torch.ones_like(active, dtype=torch.bool) if finite else active < 0
        else:
            measured = finite > 0
        dead = (active == 0) & measured
        count = measured.sum()
        store.fold("dead_fraction_sum", (dead.sum() / count.clamp(min=1)).to(active.dtype))
        store.fold("dead_calls", (count > 0).to(torch.int64))

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        measured = states["finite_positions"] > 0
        dead = measured & (states["active_entries"] == 0)
        if self.config.dead_window == "batch":
            calls = states["dead_calls"]
            with np.errstate(all="ignore"):
                share = 100.0 * states["dead_fraction_sum"].astype(np.float64) / calls
            pct = np.where(calls > 0, share, np.nan)
        else:
            pct = percent_of(dead, measured)
        return Computed(
            {"dead_pct": pct},
            {
                "dead": dead,
                "max_abs_deriv": states["max_abs_deriv"],
                "finite_positions": states["finite_positions"].astype("int64"),
            },
        )
