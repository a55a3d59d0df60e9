"""The human view: run facts above a Rich table of sites, unhealthy rows marked and highlighted.

``render_table`` prints to any Console (the CLI passes its TTY console for colour);
``to_table`` renders the same thing to a string with a Console whose width and colour are fixed by
the caller, never guessed from the environment, so golden files and piped output are stable.
"""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

from neurodiag.report.cells import PARTIAL_WARNING, fmt_cell, header_facts, site_records
from neurodiag.report.health import is_unhealthy
from neurodiag.report.model import COLUMN_SPECS, Report

UNHEALTHY_STYLE = "bold red"
PARTIAL_STYLE = "bold yellow"
#: Shown in the first column of an unhealthy row, so the flag survives without colour.
UNHEALTHY_MARK = "!"

#: Wide enough that no report wraps: ``width=None`` means "natural width" for strings.
_NATURAL_WIDTH = 10_000
#: Below this the site column would be folded into unreadable slivers.
_SITE_MIN_WIDTH = 16


def _facts_grid(report: Report) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in header_facts(report.header):
        grid.add_row(Text(label), Text(value))
    return grid


#: The terminal table's columns: the identity columns marked ``table=False`` go to CSV/JSON.
TABLE_COLUMNS = tuple(spec for spec in COLUMN_SPECS if spec.table)


def _sites_table(records: list[dict[str, Any]], flag_gates: bool) -> Table:
    # One space between columns (no padding): wide enough to read, and at 120 columns it
    # leaves ~28 characters for site names such as ``encoder.layer.0.mlp:gelu#0``.
    table = Table(box=box.SIMPLE_HEAD, padding=0, pad_edge=False, show_edge=False)
    table.add_column("", no_wrap=True)
    # Rich measures the combining "δ̄" heading one cell off, which can fold short site names.
    site_min = min(_SITE_MIN_WIDTH, max(len(str(r["site"])) for r in [{"site": "site"}, *records]))
    for spec in TABLE_COLUMNS:
        # Only the site column gives way on a narrow console (it folds, so the full name is
        # still there to look up); numbers are never cut.
        wraps = spec.name == "site"
        justify: JustifyMethod = spec.align
        table.add_column(
            spec.header,
            justify=justify,
            no_wrap=not wraps,
            overflow="fold" if wraps else "ellipsis",
            min_width=site_min if wraps else None,
        )
    for record in records:
        unhealthy = is_unhealthy(record, flag_gates)
        cells = [Text(fmt_cell(spec.name, record[spec.name])) for spec in TABLE_COLUMNS]
        table.add_row(
            Text(UNHEALTHY_MARK if unhealthy else ""),
            *cells,
            style=UNHEALTHY_STYLE if unhealthy else None,
        )
    return table


def _table_width(table: Table, sites: list[str], console: Console) -> int:
    """Console width, but never so narrow that Rich would cut numbers or drop columns.

    Rich crops a table that cannot fit: the right-most columns (``nonfinite``!) silently vanish.
    Below the minimum the lines are left longer than the console instead.
    """
    # +1: Rich measures the combining "δ̄" heading one cell short of what it renders
    options = console.options.update_width(_NATURAL_WIDTH)
    natural = Measurement.get(console, options, table).maximum + 1
    site_width = max(cell_len(site) for site in ["site", *sites])
    minimum = natural - max(0, site_width - _SITE_MIN_WIDTH)
    return max(minimum, min(natural, console.width))


def _summary(records: list[dict[str, Any]], flag_gates: bool) -> Text:
    flagged = sum(is_unhealthy(record, flag_gates) for record in records)
    if not records:
        return Text("no activation sites found")
    if not flagged:
        return Text(f"all {len(records)} sites healthy")
    return Text(
        f"{UNHEALTHY_MARK} {flagged} of {len(records)} sites need attention: "
        "dead neurons, non-finite values or a broken Bernstein bound",
        style=UNHEALTHY_STYLE,
    )


def render_table(report: Report, console: Console) -> None:
    """Print the header block, the site table and a one-line verdict to ``console``."""
    if report.header.partial:
        console.print(Text(PARTIAL_WARNING, style=PARTIAL_STYLE))
    console.print(_facts_grid(report))
    console.print()
    records = site_records(report)
    if records:
        table = _sites_table(records, report.header.flag_gates)
        width = _table_width(table, [str(record["site"]) for record in records], console)
        lines = console.render_lines(table, console.options.update_width(width), new_lines=True)
        # soft_wrap: the lines are already laid out; Rich must not crop them to the console.
        console.print(Segments(seg for line in lines for seg in line), soft_wrap=True, end="")
    console.print(_summary(records, report.header.flag_gates))


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
