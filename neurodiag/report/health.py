"""The one rule for "this site needs attention", shared by the table highlight and the CLI gate.

Kept apart from the renderers so that a colour on screen and an exit code in CI can never
disagree about which sites are unhealthy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _number(value: Any) -> float | None:
    """A finite-or-not float, or None when the cell is missing (None / NaN / pandas NA)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def is_unhealthy(row: Mapping[str, Any], flag_gates: bool = False) -> bool:
    """True when a site has dead neurons, saw NaN/Inf, or broke its Bernstein bound.

    Missing cells (None/NaN) never make a site unhealthy by themselves: ``bound_ok`` is empty
    for non-Bernstein sites, and a NaN statistic comes with ``nonfinite > 0``, which does.
    A gate (``role`` = gate: a sigmoid whose output scales a feature map) saturating at 0 is
    its job, not a dead unit: only NaN/Inf flag it, unless ``flag_gates``.
    """
    dead = _number(row.get("dead_pct"))
    nonfinite = _number(row.get("nonfinite"))
    if nonfinite is not None and nonfinite > 0:
        return True
    if row.get("role") == "gate" and not flag_gates:
        return False
    bound_ok = row.get("bound_ok")
    bound_broken = _number(bound_ok) is not None and not bool(bound_ok)
    return (dead is not None and dead > 0) or bound_broken
