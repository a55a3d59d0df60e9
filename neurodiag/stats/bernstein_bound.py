"""δ̄ and whether min |σ'| respects it: Bernstein sites only (the paper's theorem, checked)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from neurodiag.stats.statistic import Array, Column, Computed, SiteContext, Statistic

#: Relative float tolerance of the bound check. min |σ'| is never clamped: Bernstein.derivative
#: evaluates the layer's slope from a float64 table (~1e-8 relative), then rounds it to float32
#: (6e-8); 1e-6 covers both and nothing more, so a broken layer reads False.
REL_TOL = 1e-6


class BernsteinBound(Statistic):
    """δ̄ = n·δ/(u−l) of a Bernstein site, and min |σ'| ≥ δ̄ within float tolerance."""

    name = "bernstein_bound"
    columns = (
        Column(
            "delta_bar",
            "float64",
            "value",
            "Bernstein sites: the theoretical lower bound δ̄ of |σ'|",
            bernstein_only=True,
            title="δ̄",
        ),
        Column(
            "bound_ok",
            "object",
            "flag",
            "Bernstein sites: min_abs_deriv ≥ delta_bar·(1 − 1e-6), the slope as computed",
            bernstein_only=True,
            title="bound\nok",
            align="center",
        ),
    )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        delta_bar = ctx.delta_bar  # NaN off Bernstein sites
        low = np.broadcast_to(np.asarray(row.get("min_abs_deriv", math.nan)), delta_bar.shape)
        holds = low >= delta_bar * (1 - REL_TOL)
        known = ~(np.isnan(delta_bar) | np.isnan(low))
        ok = [bool(h) if k else None for h, k in zip(holds.tolist(), known.tolist(), strict=True)]
        return Computed({"delta_bar": delta_bar, "bound_ok": ok})
