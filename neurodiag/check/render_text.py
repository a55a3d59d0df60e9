"""Check results for people: a terminal table, Markdown for a PR comment, GitHub annotations.

Violations come first (what to fix), then the verdict and the facts needed to trust it (limits,
config files read, scan header). Strings are rendered with a fixed width and no colour unless the
caller asks, so golden files and CI logs are stable.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neurodiag.check.evaluation import CheckResult, Violation
from neurodiag.check.summary import headline, requirement, summary_facts
from neurodiag.check.text import fmt_value
from neurodiag.loading.pyfile import split_file_spec
from neurodiag.report.verdict_text import plural

FAIL_STYLE = "bold red"
OK_STYLE = "bold green"
_NATURAL_WIDTH = 10_000
_HEADINGS = ("site", "metric", "value", "limit", "reason")


def violation_cells(result: CheckResult) -> list[list[str]]:
    """One row of text per violation, in site order: site, metric, value, limit, reason."""
    return [
        [v.site, v.metric, fmt_value(v.metric, v.value), requirement(v), v.reason]
        for v in result.violations
    ]


def render_check_table(result: CheckResult, console: Console) -> None:
    """Print the violations table (if any), then the verdict and facts, to ``console``."""
    rows = violation_cells(result)
    if rows:
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
        for heading in _HEADINGS:
            right = heading in ("value", "limit")
            table.add_column(heading, justify="right" if right else "left", overflow="fold")
        for cells in rows:
            table.add_row(*cells, style=FAIL_STYLE)
        console.print(table)
        console.print()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in summary_facts(result):
        style = (OK_STYLE if result.ok else FAIL_STYLE) if label == "result" else None
        grid.add_row(Text(label), Text(value, style=style or ""))
    console.print(grid)


def to_check_table(result: CheckResult, *, width: int | None = None, color: bool = False) -> str:
    """The table as a string; ``width=None`` keeps every line at its natural width."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width or _NATURAL_WIDTH,
        color_system="truecolor" if color else None,
        force_terminal=color,
        force_jupyter=False,
        highlight=False,
        emoji=False,
        markup=False,
    )
    render_check_table(result, console)
    return "".join(line.rstrip(" ") + "\n" for line in buffer.getvalue().splitlines())


def _md(text: str) -> str:
    """Escape a Markdown table cell: ``|`` would end it, a newline would end the row."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_check_markdown(result: CheckResult, *, width: int | None = None, color: bool = False) -> str:
    """A PR comment: verdict heading, violations as a pipe table, facts as a list."""
    mark = "✅" if result.ok else "❌"
    parts = [f"## {mark} neurodiag check\n\n**{_md(headline(result))}**\n\n"]
    rows = violation_cells(result)
    if rows:
        parts.append("| " + " | ".join(_HEADINGS) + " |\n")
        parts.append("| --- | --- | ---: | ---: | --- |\n")
        for site, *rest in rows:
            cells = [f"`{_md(site)}`" if "`" not in site else _md(site), *map(_md, rest)]
            parts.append("| " + " | ".join(cells) + " |\n")
        parts.append("\n")
    parts += [f"- **{label}**: {_md(value)}\n" for label, value in summary_facts(result)[1:]]
    return "".join(parts)


def _gh_data(text: str) -> str:
    """Escape the message of a GitHub workflow command (``%``, CR and LF are special)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


# GitHub shows about 10 annotations of one kind per step; more are hidden.
GITHUB_MAX_ANNOTATIONS = 10


def _severity(violations: list[Violation]) -> tuple[int, tuple[float, ...]]:
    """Sort key of a site, worst first: more violated metrics, then its value/limit ratios from
    the largest down (a missing value or a zero against a floor counts as infinitely far)."""
    ratios = []
    for v in violations:
        if v.value is None or not v.threshold:
            ratios.append(math.inf)
        elif v.op == ">":
            ratios.append(abs(v.value / v.threshold))
        else:
            ratios.append(abs(v.threshold / v.value) if v.value else math.inf)
    return len(violations), tuple(sorted(ratios, reverse=True))


def to_check_github(result: CheckResult, *, width: int | None = None, color: bool = False) -> str:
    """At most one ``::error`` per site (all its violations in one message), worst site first
    and at most GITHUB_MAX_ANNOTATIONS of them, with ``file=`` the model file when the spec names
    one; then a count line
    and a ``::notice`` with the verdict and facts.

    New sites of a baseline comparison get one ``::notice``: worth a look, never a failure.
    """
    by_site: dict[str, list[Violation]] = {}
    for v in result.violations:
        by_site.setdefault(v.site, []).append(v)
    ranked = sorted(by_site.items(), key=lambda item: _severity(item[1]), reverse=True)
    model_file = split_file_spec(result.report.header.model)
    location = (
        f"file={_gh_property(model_file[0])},title=neurodiag" if model_file else "title=neurodiag"
    )
    lines = [
        f"::error {location}::"
        + _gh_data(f"site {site}: " + "; ".join(f"{v.describe()} ({v.reason})" for v in vs))
        for site, vs in ranked[:GITHUB_MAX_ANNOTATIONS]
    ]
    if ranked:
        shown = min(len(ranked), GITHUB_MAX_ANNOTATIONS)
        rest = f"; {len(ranked) - shown} more not annotated" if len(ranked) > shown else ""
        lines.append(
            f"neurodiag: {plural(len(result.violations), 'violation')} at "
            f"{plural(len(ranked), 'site')}, {shown} annotated worst first{rest}"
        )
    if result.baseline is not None and result.baseline.new_sites:
        new = result.baseline.new_sites
        lines.append(
            "::notice title=neurodiag::"
            + _gh_data(f"{plural(len(new), 'new site')} not in the baseline: {', '.join(new)}")
        )
    facts = [value for label, value in summary_facts(result) if label in ("result", "model")]
    header = result.report.header
    facts.append(f"{header.samples:,} samples in {header.batches} batches")
    lines.append("::notice title=neurodiag::" + _gh_data(" · ".join(facts)))
    return "\n".join(lines) + "\n"


def _gh_property(text: str) -> str:
    """Escape a property value of a workflow command (``,`` and ``:`` too)."""
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def write_step_summary(result: CheckResult) -> Path | None:
    """Append the Markdown report to ``$GITHUB_STEP_SUMMARY`` when GitHub Actions sets it."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(to_check_markdown(result) + "\n")
    return path


__all__ = [
    "GITHUB_MAX_ANNOTATIONS",
    "render_check_table",
    "to_check_github",
    "to_check_markdown",
    "to_check_table",
    "violation_cells",
    "write_step_summary",
]
