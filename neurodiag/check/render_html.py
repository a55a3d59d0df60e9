"""``check --format html``: the check's verdict and violations above the scan's own report, in
one self-contained page (the same page parts as ``scan --format html``)."""

from __future__ import annotations

from neurodiag.check.evaluation import CheckResult
from neurodiag.check.render_text import violation_cells
from neurodiag.check.summary import summary_facts
from neurodiag.report.render_html import CONTROLS, escape, html_page, report_fragment

_HEADINGS = ("site", "metric", "value", "limit", "reason")


def to_check_html(result: CheckResult, *, width: int | None = None, color: bool = False) -> str:
    """The page; ``width`` and ``color`` are part of the renderer signature and do not apply."""
    facts = summary_facts(result)
    level = "healthy" if result.ok else "error"
    head = "".join(f"<th>{escape(h)}</th>" for h in _HEADINGS)
    rows = "".join(
        "<tr class='error'>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>"
        for cells in violation_cells(result)
    )
    violations = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    verdict = next((value for label, value in facts if label == "result"), "")
    items = "".join(
        f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>"
        for label, value in facts
        if label == "limits" or label in ("overrides", "config", "baseline")
    )
    scan = report_fragment(result.report, figure=True, controls=CONTROLS)
    body = (
        f'<div class="verdict {level}">{escape(verdict)}</div><dl>{items}</dl>'
        f"{violations if rows else ''}<h2>the scan</h2>{scan}"
    )
    return html_page(f"neurodiag check of {result.report.header.model}", body)
