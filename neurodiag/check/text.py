"""How a checked value and its limit read in a violation line, shared by every check renderer.

Values use the report's human formats (1-decimal percent, 3-digit scientific), so a number in a
CI annotation looks like the same number in ``neurodiag scan``; limits the user typed are shown
as typed (``30``, ``1e-8``), not padded into the value's format.
"""

from __future__ import annotations

from typing import Any

from neurodiag.report.cells import (
    COUNT_COLUMNS,
    PERCENT_COLUMNS,
    fmt_general,
    fmt_sci,
    is_missing,
)

NO_VALUE = "no value"


def fmt_value(metric: str, value: Any) -> str:
    """A report value of ``metric``; missing (None/NaN) reads ``no value``."""
    if is_missing(value):
        return NO_VALUE
    number = float(value)
    if metric in PERCENT_COLUMNS:
        return f"{number:.1f}"
    if metric in COUNT_COLUMNS:  # nonfinite, massive
        return str(int(number))
    return fmt_sci(number)


def fmt_limit(metric: str, limit: float | None, *, derived: bool = False) -> str:
    """A limit: as typed when the user set it, in the value's format when neurodiag derived it."""
    if limit is None:
        return ""
    if derived:
        return fmt_value(metric, limit)
    if metric in COUNT_COLUMNS:
        return str(int(limit))
    return fmt_general(float(limit))


def unit(metric: str) -> str:
    """``%`` for percentage columns (for prose such as an assertion message), else nothing."""
    return "%" if metric in PERCENT_COLUMNS else ""


__all__ = ["NO_VALUE", "fmt_limit", "fmt_value", "unit"]
