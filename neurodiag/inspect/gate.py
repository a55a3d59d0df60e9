"""The CI gate of ``neurodiag inspect``: which layers break a percentage limit.

A library function, so that a pytest check or a training script applies the same policy as
``neurodiag inspect --max-dead-rows-pct``; the CLI only prints the lines and sets the exit code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

#: limit key (and CLI flag ``--max-...``) -> the column it bounds, and how a line names it
LIMITS: dict[str, tuple[str, str]] = {
    "max_dead_rows_pct": ("dead_rows_pct", "dead rows"),
    "max_duplicate_rows_pct": ("duplicate_rows_pct", "duplicate rows"),
    "max_nu_dead_rows_pct": ("nu_dead_rows_pct", "ν-dead rows"),
}


def violations(frame: pd.DataFrame, limits: Mapping[str, float | None]) -> list[str]:
    """One line per (layer, limit) where the layer's percentage is above the limit.

    An absent value (NaN: no optimizer state for ν) breaks no limit; unknown keys are an error.
    """
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise ValueError(f"unknown inspect limits {unknown}; known: {sorted(LIMITS)}")
    lines = []
    for key, limit in limits.items():
        if limit is None:
            continue
        column, what = LIMITS[key]
        for layer, value in zip(frame["layer"], frame[column], strict=True):
            if value is not None and not math.isnan(float(value)) and float(value) > limit:
                lines.append(f"{layer}: {what} {float(value):.1f} % > {limit:g} %")
    return lines
