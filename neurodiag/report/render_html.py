"""One self-contained HTML file: the verdict, run facts, a sortable and filterable site table
with flagged rows first, and the scan's figure inline. No network: styles, script and the PNG
are all in the file. ``report_fragment`` is the same without page and script, for notebooks.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping
from typing import Any

from neurodiag.registry import Registry
from neurodiag.report.cells import PARTIAL_WARNING, fmt_cell, header_facts, site_records
from neurodiag.report.health import findings, severity
from neurodiag.report.model import COLUMN_SPECS, Report
from neurodiag.report.verdict import Verdict, flagged_first, select_rows, verdict
from neurodiag.report.verdict_text import rollup_text, verdict_line

#: Figures drawn into the page: alt text -> fn(report) -> PNG bytes. ``neurodiag.plots``
#: registers the scan's figure (it sits above the report layer, and matplotlib is optional).
FIGURES: Registry[Callable[[Report], bytes]] = Registry("figure")

#: Columns of the HTML table: the terminal's, then the reasons a site is flagged.
_COLUMNS = tuple(spec for spec in COLUMN_SPECS if spec.table)

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}
h1{font-size:1.3em;margin:0 0 .5em} .verdict{font-size:1.1em;font-weight:600;padding:.5em .8em;
border-radius:6px;margin:.4em 0 .8em} .error{background:#fde8e8;color:#9b1c1c}
.warning{background:#fdf6e3;color:#8a6d00} .healthy{background:#e6f6ea;color:#1e6b34}
ul.findings{margin:.2em 0 1em 1.2em;padding:0} dl{display:grid;grid-template-columns:max-content
auto;gap:.1em 1em;margin:0 0 1em} dt{font-weight:600} dd{margin:0}
table{border-collapse:collapse;font-variant-numeric:tabular-nums} th,td{padding:.2em .6em;
border-bottom:1px solid #e5e5e5;white-space:nowrap} th{cursor:pointer;background:#f5f5f7;
position:sticky;top:0;text-align:left} td.num{text-align:right} tr.error td{color:#9b1c1c;
font-weight:600} tr.warning td{color:#8a6d00} .controls{margin:.6em 0} input[type=search]{
padding:.3em;width:20em} img{max-width:100%;margin:1em 0} code{font-size:.95em}
"""

#: Sorting by a header click (numbers as numbers, blanks last) and filtering by text or flag.
_SCRIPT = """
const table=document.getElementById('sites'),body=table.tBodies[0];
const rows=[...body.rows];let order={col:-1,up:true};
function key(cell){const v=cell.dataset.v;if(v===undefined||v==='')return null;
const n=Number(v);return Number.isNaN(n)?v.toLowerCase():n}
table.tHead.onclick=e=>{const th=e.target.closest('th');if(!th)return;const col=th.cellIndex;
order={col:col,up:order.col===col?!order.up:true};
rows.sort((a,b)=>{const x=key(a.cells[col]),y=key(b.cells[col]);
if(x===y)return 0;if(x===null)return 1;if(y===null)return -1;
return (x<y?-1:1)*(order.up?1:-1)});rows.forEach(r=>body.appendChild(r))};
const q=document.getElementById('q'),flagged=document.getElementById('flagged');
function filter(){const text=q.value.toLowerCase();let shown=0;
rows.forEach(r=>{const ok=(!text||r.textContent.toLowerCase().includes(text))&&
(!flagged.checked||r.className);r.hidden=!ok;shown+=ok});
document.getElementById('count').textContent=shown+' of '+rows.length+' rows'}
if(q){q.oninput=filter;flagged.onchange=filter;filter()}
"""


def escape(text: object) -> str:
    """Text as HTML (quotes too: it also goes into attributes)."""
    return html.escape(str(text), quote=True)


def _verdict_html(v: Verdict) -> str:
    level, line = verdict_line(v)
    parts = [f'<div class="verdict {escape(level)}">{escape(line)}</div>', '<ul class="findings">']
    for label, column, worst in v.worst:
        cells = ", ".join(
            f"<code>{escape(site)}</code> {escape(fmt_cell(column, value))}"
            for site, value in worst
        )
        parts.append(f"<li>worst {escape(label)}: {cells}</li>")
    for label, rollups in (("by activation", v.by_activation), ("by block", v.by_block)):
        if len(rollups) > 1:
            parts.append(f"<li>{escape(label)}: {escape(rollup_text(rollups))}</li>")
    parts.append("</ul>")
    return "".join(parts)


def _facts_html(report: Report) -> str:
    items = "".join(
        f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>"
        for label, value in header_facts(report.header)
    )
    return f"<dl>{items}</dl>"


def _row_html(record: Mapping[str, Any], flag_gates: bool) -> str:
    level = severity(record, flag_gates) or ""
    cells = []
    for spec in _COLUMNS:
        value = record[spec.name]
        raw = "" if fmt_cell(spec.name, value) in ("", "–") else value
        if isinstance(raw, bool):
            raw = int(raw)
        align = ' class="num"' if spec.align == "right" else ""
        cells.append(f'<td{align} data-v="{escape(raw)}">{escape(fmt_cell(spec.name, value))}</td>')
    why = "; ".join(reason for _, reason in findings(record, flag_gates))
    cells.append(f'<td data-v="{escape(why)}">{escape(why)}</td>')
    return f'<tr class="{level}">{"".join(cells)}</tr>'


def _table_html(records: list[Mapping[str, Any]], flag_gates: bool) -> str:
    heads = "".join(f"<th>{escape(spec.header.replace(chr(10), ' '))}</th>" for spec in _COLUMNS)
    body = "".join(_row_html(r, flag_gates) for r in flagged_first(records, flag_gates))
    head = f"<thead><tr>{heads}<th>why</th></tr></thead>"
    return f'<table id="sites">{head}<tbody>{body}</tbody></table>'


def _figure_html(report: Report) -> str:
    if not report.rows:
        return ""
    parts = []
    for alt, draw in FIGURES.items():
        try:
            png = draw(report)
        except Exception as error:  # matplotlib missing, say: the table stands alone
            parts.append(f"<p><em>{escape(alt)}: not drawn ({escape(error)})</em></p>")
            continue
        parts.append(png_img(alt, png))
    return "".join(parts)


def report_fragment(report: Report, *, figure: bool = False, controls: str = "") -> str:
    """Verdict, facts and the static table (flagged first): what a notebook shows."""
    records = site_records(report)
    flag_gates = report.header.flag_gates
    shown = select_rows(records, flag_gates, report.view.only_flagged, report.view.top)
    partial = f"<p><strong>{escape(PARTIAL_WARNING)}</strong></p>" if report.header.partial else ""
    return (
        f"<div class='neurodiag-report'>{partial}{_verdict_html(verdict(records, flag_gates))}"
        f"{_facts_html(report)}{_figure_html(report) if figure else ''}{controls}"
        f"{_table_html(list(shown), flag_gates)}</div>"
    )


#: The filter box and flag switch above a sortable table (the script reads their ids).
CONTROLS = (
    '<div class="controls"><input id="q" type="search" placeholder="filter rows, e.g. relu">'
    ' <label><input id="flagged" type="checkbox"> only flagged</label>'
    ' <span id="count"></span> · click a heading to sort</div>'
)


def html_page(title: str, body: str) -> str:
    """A whole page around ``body``, whose table ``id="sites"`` (if any) sorts and filters."""
    script = f"<script>{_SCRIPT}</script>" if 'id="sites"' in body else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}{script}</body></html>\n"
    )


def png_img(alt: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def to_html(report: Report, *, width: int | None = None, color: bool = False) -> str:
    """The whole page. ``width`` and ``color`` are part of the renderer signature and do not
    apply."""
    body = report_fragment(report, figure=True, controls=CONTROLS)
    return html_page(f"neurodiag scan of {report.header.model}", body)
