"""How sites and run facts read to a human: shared by the table and Markdown renderers.

Machine formats (CSV, JSON) never go through here: they keep full precision. Two kinds of
blank: ``MISSING`` (an en dash) is a statistic that has no value (e.g. NaN after non-finite
gradients); an empty cell means "does not apply" (``delta_bar`` / ``bound_ok`` off Bernstein).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from neurodiag.report.model import COLUMN_SPECS, Report, ScanHeader

MISSING = "\u2013"  # en dash: reads as "no value" and cannot be mistaken for a minus sign
PARTIAL_WARNING = "PARTIAL: the scan stopped early; the numbers cover only the batches seen."

#: Columns that only exist for Bernstein sites: blank there means "not applicable".
BERNSTEIN_ONLY: frozenset[str] = frozenset(c.name for c in COLUMN_SPECS if c.bernstein_only)
PERCENT_COLUMNS: frozenset[str] = frozenset(c.name for c in COLUMN_SPECS if c.unit == "percent")
SCIENTIFIC_COLUMNS: frozenset[str] = frozenset(c.name for c in COLUMN_SPECS if c.unit == "value")
COUNT_COLUMNS: frozenset[str] = frozenset(c.name for c in COLUMN_SPECS if c.unit == "count")


def is_missing(value: Any) -> bool:
    """None, float NaN and pandas' NA all mean "no value" in a report row."""
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _compact_exponent(text: str) -> str:
    """``1.23e-04`` -> ``1.23e-4``: the padded exponent only costs table width."""
    mantissa, sep, exponent = text.partition("e")
    if not sep:
        return text
    sign = "-" if exponent.startswith("-") else ""
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def fmt_sci(value: float) -> str:
    """Three significant digits in scientific notation; exact zero stays ``0``."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    return _compact_exponent(f"{value:.2e}")


def fmt_general(value: float) -> str:
    """Thresholds as the user typed them (``1e-8``, ``0.1``), not forced into one notation."""
    return _compact_exponent(f"{value:g}")


def fmt_duration(seconds: float) -> str:
    """Wall time at a precision a reader cares about: ms, s, then min/h."""
    if is_missing(seconds):
        return MISSING
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_cell(column: str, value: Any) -> str:
    """One per-site cell as shown to a human (1-decimal %, 3-digit scientific, ✓/✗)."""
    if is_missing(value):
        return "" if column in BERNSTEIN_ONLY else MISSING
    if isinstance(value, bool | np.bool_):
        return "✓" if value else "✗"
    if column == "role":  # only the exception reads: a blank is an activation proper
        return "" if value == "activation" else str(value)
    if column in PERCENT_COLUMNS:
        return f"{float(value):.1f}"
    if column in SCIENTIFIC_COLUMNS:
        return fmt_sci(float(value))
    if column in COUNT_COLUMNS:
        return f"{int(value):,}"
    return str(value)


def shorten_middle(text: str, width: int) -> str:
    """``features.denseblock4.denselayer16.relu2`` -> ``features.de…layer16.relu2``: the
    start and the leaf name both stay readable (a fold would split the leaf over two lines)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = (width - 1) * 2 // 5
    tail = width - 1 - head
    return f"{text[:head]}…{text[len(text) - tail :]}"


def header_facts(header: ScanHeader) -> list[tuple[str, str]]:
    """The run facts as labelled lines; long specs get a line each, the short ones share two."""
    seed = "none" if header.seed is None else str(header.seed)
    run = " · ".join(
        [
            f"samples {header.samples:,}",
            f"batches {header.batches:,}",
            f"device {header.device}",
            f"dtype {header.dtype}",
            f"mode {header.mode}",
            f"seed {seed}",
            f"time {fmt_duration(header.wall_time_s)}",
        ]
    )
    thresholds = " · ".join(
        [
            f"eps {fmt_general(header.eps)}",
            f"tau {fmt_general(header.tau)}",
            f"dead window {header.dead_window}",
        ]
    )
    facts = [
        ("model", header.model),
        ("data", header.data),
        ("loss", header.loss),
        *([("window", header.window)] if header.window else []),
        ("run", run),
        ("thresholds", thresholds),
    ]
    facts += [("note", note) for note in header.notes]
    return facts


def site_records(report: Report) -> list[dict[str, Any]]:
    """Rows as the frame types them, so every renderer sees exactly ``COLUMNS`` and one dtype."""
    return [
        {str(key): value for key, value in row.items()}
        for row in report.to_frame().to_dict(orient="records")
    ]
