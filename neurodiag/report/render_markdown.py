"""Markdown for pasting into an issue or PR: run facts as a list, sites as a GFM pipe table.

Written by hand rather than with ``DataFrame.to_markdown`` because that needs ``tabulate``, which is
not a dependency. Cells use the same human formatting as the terminal table.
"""

from __future__ import annotations

from neurodiag.report.cells import PARTIAL_WARNING, fmt_cell, header_facts, site_records
from neurodiag.report.health import is_unhealthy
from neurodiag.report.model import COLUMN_SPECS, COLUMNS, Report

_RULES = {"left": "---", "right": "---:", "center": ":---:"}


def _escape(text: str) -> str:
    """A literal ``|`` would end the cell; ``\\`` first so escapes are not doubled up."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def pipe_table(headings: list[str], rows: list[list[str]], align: list[str]) -> str:
    """A GitHub-flavoured pipe table; ``align`` holds "left", "right" or "center" per column."""
    lines = [headings, [_RULES[how] for how in align], *rows]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def to_markdown(report: Report, *, width: int | None = None, color: bool = False) -> str:
    """Facts, then one table row per site; unhealthy sites in bold with a ``!`` mark.

    ``width`` and ``color`` are part of the common renderer signature and do not apply.
    """
    parts = ["## neurodiag scan\n\n"]
    if report.header.partial:
        parts.append(f"> **{_escape(PARTIAL_WARNING)}**\n\n")
    parts += [f"- **{label}**: {_escape(value)}\n" for label, value in header_facts(report.header)]
    parts.append("\n")

    records = site_records(report)
    rows: list[list[str]] = []
    for record in records:
        cells = [_escape(fmt_cell(column, record[column])) for column in COLUMNS]
        if is_unhealthy(record, report.header.flag_gates):
            cells[0] = f"**{cells[0]}** !"
        rows.append(cells)
    align: list[str] = [spec.align for spec in COLUMN_SPECS]  # numbers line up on the right
    parts.append(pipe_table(list(COLUMNS), rows, align))
    flagged = sum(is_unhealthy(record, report.header.flag_gates) for record in records)
    if flagged:
        parts.append(
            f"\n**!** {flagged} of {len(records)} sites need attention: dead neurons, "
            "non-finite values or a broken Bernstein bound.\n"
        )
    return "".join(parts)
