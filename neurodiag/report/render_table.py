"""The human view: the verdict first, run facts, then a Rich table of sites that fits the width.

``render_table`` prints to any Console (the CLI passes its TTY console for colour);
``to_table`` renders the same thing to a string with a Console whose width and colour are fixed by
the caller, never guessed from the environment, so golden files and piped output are stable.

Fitting: the full table when it fits; else long site names are shortened in the middle; below
that the compact columns (no role, δ̄ or inactive %, short headings; CSV/JSON keep them all).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, JustifyMethod
from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

from neurodiag.report.cells import (
    PARTIAL_WARNING,
    fmt_cell,
    header_facts,
    shorten_middle,
    site_records,
)
from neurodiag.report.health import severity
from neurodiag.report.model import COLUMN_SPECS, Report
from neurodiag.report.verdict import Verdict, select_rows, verdict
from neurodiag.report.verdict_text import ERROR_MARK, WARNING_MARK, rollup_text, verdict_line

UNHEALTHY_STYLE = "bold red"
WARNING_STYLE = "yellow"
HEALTHY_STYLE = "bold green"
PARTIAL_STYLE = "bold yellow"
#: Kept for callers of 0.1: the error mark.
UNHEALTHY_MARK = ERROR_MARK
_LEVEL_STYLE = {"error": UNHEALTHY_STYLE, "warning": WARNING_STYLE, "healthy": HEALTHY_STYLE}

#: Wide enough that no report wraps: ``width=None`` means "natural width" for strings.
_NATURAL_WIDTH = 10_000
#: Site names are never shortened below this (the lines get wider than the console instead).
_SITE_MIN_WIDTH = 12
#: Site names in the verdict lines are shortened to this.
_VERDICT_NAME_WIDTH = 32


@dataclass(frozen=True)
class _Layout:
    columns: tuple[str, ...]
    headers: Mapping[str, str]


#: The full table: every column marked for the terminal (identity columns ``table=False`` go
#: to CSV/JSON only).
TABLE_COLUMNS = tuple(spec for spec in COLUMN_SPECS if spec.table)
_WIDE = _Layout(tuple(s.name for s in TABLE_COLUMNS), {s.name: s.header for s in TABLE_COLUMNS})
_COMPACT_HEADERS = {
    "site": "site",
    "activation": "act",
    "neurons": "neur",
    "dead_pct": "dead\n%",
    "dormant_pct": "dorm\n%",
    "grad_dormant_pct": "gdorm\n%",
    "mag": "mag",
    "min_abs_deriv": "min\n|σ'|",
    "bound_ok": "δ̄\nok",
    "nonfinite": "NaN\nInf",
}
_COMPACT = _Layout(tuple(_COMPACT_HEADERS), _COMPACT_HEADERS)
_ALIGN: dict[str, JustifyMethod] = {s.name: s.align for s in COLUMN_SPECS}


def _facts_grid(report: Report) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in header_facts(report.header):
        grid.add_row(Text(label), Text(value))
    return grid


def _verdict_grid(v: Verdict) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    level, text = verdict_line(v)
    grid.add_row(Text("verdict"), Text(text, style=_LEVEL_STYLE.get(level, "")))
    for label, column, worst in v.worst:
        cells = " · ".join(
            f"{shorten_middle(site, _VERDICT_NAME_WIDTH)} {fmt_cell(column, value)}"
            for site, value in worst
        )
        grid.add_row(Text(f"worst {label}"), Text(cells))
    for label, rollups in (("by activation", v.by_activation), ("by block", v.by_block)):
        if len(rollups) > 1:
            grid.add_row(Text(label), Text(rollup_text(rollups)))
    return grid


def _sites_table(
    records: Sequence[Mapping[str, Any]], layout: _Layout, site_width: int | None, flag_gates: bool
) -> Table:
    table = Table(box=box.SIMPLE_HEAD, padding=0, pad_edge=False, show_edge=False)
    # One space between columns (no padding), set by the mark column's own width.
    table.add_column("", no_wrap=True, width=1)
    for name in layout.columns:
        table.add_column(layout.headers[name], justify=_ALIGN[name], no_wrap=True)
    for record in records:
        level = severity(record, flag_gates)
        cells = []
        for name in layout.columns:
            text = fmt_cell(name, record[name])
            if name == "site" and site_width is not None:
                text = shorten_middle(text, site_width)
            cells.append(Text(text))
        mark = {"error": ERROR_MARK, "warning": WARNING_MARK}.get(level or "", "")
        style = {"error": UNHEALTHY_STYLE, "warning": WARNING_STYLE}.get(level or "")
        table.add_row(Text(mark), *cells, style=style)
    return table


def _width(table: Table, console: Console) -> int:
    # +1: Rich measures the combining "δ̄" heading one cell short of what it renders
    options = console.options.update_width(_NATURAL_WIDTH)
    return Measurement.get(console, options, table).maximum + 1


def _fitted_table(
    records: Sequence[Mapping[str, Any]], console: Console, flag_gates: bool
) -> tuple[Table, int]:
    """The widest layout that fits the console, names shortened as far as needed, and the
    width to lay it out at (wider than the console only when even that cannot fit)."""
    longest = max(len(str(r["site"])) for r in records)
    for layout in (_WIDE, _COMPACT):
        table = _sites_table(records, layout, None, flag_gates)
        natural = _width(table, console)
        if natural <= console.width:
            return table, natural
        room = longest - (natural - console.width)
        if room >= min(longest, 16) or layout is _COMPACT:
            table = _sites_table(records, layout, max(room, _SITE_MIN_WIDTH), flag_gates)
            return table, max(console.width, _width(table, console))
    raise AssertionError("unreachable")


def render_table(report: Report, console: Console) -> None:
    """Print the verdict, the run facts, the site table and the verdict line to ``console``."""
    flag_gates = report.header.flag_gates
    if report.header.partial:
        console.print(Text(PARTIAL_WARNING, style=PARTIAL_STYLE))
    records = site_records(report)
    v = verdict(records, flag_gates)
    console.print(_verdict_grid(v))
    console.print(_facts_grid(report))
    console.print()
    shown = select_rows(records, flag_gates, report.view.only_flagged, report.view.top)
    if shown:
        table, width = _fitted_table(shown, console, flag_gates)
        lines = console.render_lines(table, console.options.update_width(width), new_lines=True)
        # soft_wrap: the lines are laid out already; Rich must not crop them to the console
        # (it would silently drop the right-most columns).
        console.print(Segments(seg for line in lines for seg in line), soft_wrap=True, end="")
    if len(shown) < len(records):
        which = "the worst first" if report.view.top else "errors and warnings only"
        console.print(Text(f"showing {len(shown)} of {len(records)} sites: {which}"))
    level, text = verdict_line(v)
    console.print(Text(text, style=_LEVEL_STYLE.get(level, "")))


def to_table(report: Report, *, width: int | None = None, color: bool = False) -> str:
    """The table as a string; ``width=None`` keeps every line at its natural width."""
    if width is not None and width < 1:
        raise ValueError(f"width must be a positive number of columns, got {width}")
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width or _NATURAL_WIDTH,
        color_system="truecolor" if color else None,
        force_terminal=color,
        force_jupyter=False,  # in a notebook Rich would display instead of writing to the file
        highlight=False,
        emoji=False,
        markup=False,
    )
    render_table(report, console)
    # Rich pads some lines to the console width; trailing blanks only make diffs noisy.
    return "".join(line.rstrip(" ") + "\n" for line in buffer.getvalue().splitlines())
