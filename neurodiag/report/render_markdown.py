"""Markdown for pasting into an issue or PR: run facts as a list, sites as a GFM pipe table.

Written by hand rather than with ``DataFrame.to_markdown`` because that needs ``tabulate``, which is
not a dependency. Cells use the same human formatting as the terminal table.
"""

from __future__ import annotations

from neurodiag.report.cells import PARTIAL_WARNING, fmt_cell, header_facts, site_records
from neurodiag.report.health import severity
from neurodiag.report.model import COLUMN_SPECS, COLUMNS, Report
from neurodiag.report.verdict import Verdict, select_rows, verdict
from neurodiag.report.verdict_text import rollup_text, verdict_line

_RULES = {"left": "---", "right": "---:", "center": ":---:"}


def _escape(text: str) -> str:
    """A literal ``|`` would end the cell; ``\\`` first so escapes are not doubled up."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def pipe_table(headings: list[str], rows: list[list[str]], align: list[str]) -> str:
    """A GitHub-flavoured pipe table; ``align`` holds "left", "right" or "center" per column."""
    lines = [headings, [_RULES[how] for how in align], *rows]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def verdict_markdown(v: Verdict) -> str:
    """The verdict as a short list: what a pull-request comment should lead with."""
    _, line = verdict_line(v)
    parts = [f"**{_escape(line)}**\n\n"]
    for label, column, worst in v.worst:
        cells = ", ".join(f"`{_escape(site)}` {fmt_cell(column, value)}" for site, value in worst)
        parts.append(f"- worst {_escape(label)}: {cells}\n")
    for label, rollups in (("by activation", v.by_activation), ("by block", v.by_block)):
        if len(rollups) > 1:
            parts.append(f"- {label}: {_escape(rollup_text(rollups))}\n")
    return "".join(parts) + "\n"


def to_markdown(report: Report, *, width: int | None = None, color: bool = False) -> str:
    """The verdict, facts, then one table row per shown site; errors in bold with ``!``,
    warnings marked ``~``.

    ``width`` and ``color`` are part of the common renderer signature and do not apply.
    """
    parts = ["## neurodiag scan\n\n"]
    if report.header.partial:
        parts.append(f"> **{_escape(PARTIAL_WARNING)}**\n\n")
    records = site_records(report)
    flag_gates = report.header.flag_gates
    parts.append(verdict_markdown(verdict(records, flag_gates)))
    parts += [f"- **{label}**: {_escape(value)}\n" for label, value in header_facts(report.header)]
    parts.append("\n")

    shown = select_rows(records, flag_gates, report.view.only_flagged, report.view.top)
    rows: list[list[str]] = []
    for record in shown:
        cells = [_escape(fmt_cell(column, record[column])) for column in COLUMNS]
        level = severity(record, flag_gates)
        if level == "error":
            cells[0] = f"**{cells[0]}** !"
        elif level == "warning":
            cells[0] = f"{cells[0]} ~"
        rows.append(cells)
    align: list[str] = [spec.align for spec in COLUMN_SPECS]  # numbers line up on the right
    if rows:
        parts.append(pipe_table(list(COLUMNS), rows, align))
    if len(shown) < len(records):
        which = "the worst first" if report.view.top else "errors and warnings only"
        parts.append(f"\n{len(shown)} of {len(records)} sites shown: {which}.\n")
    return "".join(parts)
