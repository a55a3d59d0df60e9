"""zero-output %: neurons whose activation a is exactly 0 at every finite position.

The ReLU family's "never fires": E|a_i| == 0 over the scan. It reads the τ-dormant statistic's
states (``sum_abs_act``, ``finite_positions``; declared identically, so they are stored and
updated once): a sum of |a| is 0 exactly when every summed |a| is 0. Unlike dead % (|σ'| ≤ ε) it
does not depend on ε, and it is 0 for any activation that is 0 at a single z only (leaky ReLU,
Bernstein, GELU...) unless every input of the neuron hits that z.
"""

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
    percent_of,
)


class ZeroOutputNeurons(Statistic):
    """% of measured neurons with Σ|a_i| == 0 over their finite positions."""

    name = "zero_output"
    states = (
        StateSpec("sum_abs_act", "sum"),
        StateSpec("finite_positions", "sum", count=True),
    )
    columns = (
        Column(
            "zero_output_pct",
            "float64",
            "percent",
            "% of neurons whose output a is exactly 0 at every finite position (E|a_i| = 0: "
            "the ReLU family's never-firing units; independent of ε)",
            title="zero-out\n%",
            table=False,  # CSV, JSON and Markdown: the terminal table keeps dead % only
        ),
    )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        measured = states["finite_positions"] > 0
        zero = measured & (states["sum_abs_act"] == 0)
        return Computed({"zero_output_pct": percent_of(zero, measured)}, {"zero_output": zero})
