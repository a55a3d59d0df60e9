"""The one rule for how much a site needs attention, shared by every renderer.

Kept apart from the renderers so that a colour on screen, a mark in Markdown and a verdict can
never disagree about which sites are errors. (``neurodiag check`` gates CI on its own, explicit
thresholds.)

Severity, by default (README "Reading a report"):

- **error**: NaN/Inf seen (``nonfinite`` > 0), a broken Bernstein bound (``bound_ok`` false),
  or at least ``ERROR_DEAD_PCT`` (10 %) of the site's neurons dead;
- **warning**: some neurons dead, but fewer than that: on a randomly initialised CNN nearly every
  ReLU has a few, so they are shown apart instead of flagging every row;
- otherwise healthy.

A gate (``role`` = gate: a sigmoid whose output scales a feature map) saturating at 0 is its
job, not a dead unit: only NaN/Inf make it an error, unless ``flag_gates``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

#: At least this share of dead neurons makes a site an error; fewer dead ones are a warning.
ERROR_DEAD_PCT = 10.0

Severity = Literal["error", "warning"]


def _number(value: Any) -> float | None:
    """A finite-or-not float, or None when the cell is missing (None / NaN / pandas NA)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def findings(row: Mapping[str, Any], flag_gates: bool = False) -> list[tuple[Severity, str]]:
    """What is wrong with a site, worst first: (severity, short reason) pairs.

    Missing cells (None/NaN) never count by themselves: ``bound_ok`` is empty for non-Bernstein
    sites, and a NaN statistic comes with ``nonfinite > 0``, which does.
    """
    found: list[tuple[Severity, str]] = []
    nonfinite = _number(row.get("nonfinite"))
    if nonfinite is not None and nonfinite > 0:
        found.append(("error", "NaN/Inf"))
    if row.get("role") == "gate" and not flag_gates:
        return found
    bound_ok = row.get("bound_ok")
    if _number(bound_ok) is not None and not bool(bound_ok):
        found.append(("error", "Bernstein bound broken"))
    dead = _number(row.get("dead_pct"))
    if dead is not None and dead >= ERROR_DEAD_PCT:
        found.append(("error", f"≥ {ERROR_DEAD_PCT:g} % dead"))
    elif dead is not None and dead > 0:
        found.append(("warning", f"< {ERROR_DEAD_PCT:g} % dead"))
    return found


def severity(row: Mapping[str, Any], flag_gates: bool = False) -> Severity | None:
    """ "error", "warning" or None (healthy)."""
    found = findings(row, flag_gates)
    if not found:
        return None
    return "error" if any(level == "error" for level, _ in found) else "warning"


def is_unhealthy(row: Mapping[str, Any], flag_gates: bool = False) -> bool:
    """True when a site is an error (see the module docstring); warnings are not."""
    return severity(row, flag_gates) == "error"
