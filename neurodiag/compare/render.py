"""Renderers for a comparison: the side-by-side summary (and per-site detail) of its variants.

They read only the ``Comparison``'s frames and dict, never a model.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any, Protocol

import pandas as pd
from rich import box
from rich.console import Console, JustifyMethod
from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

from neurodiag.compare.summary import COMPARISON_VIEWS, SUMMARY_COLUMNS, Comparison
from neurodiag.registry import Registry
from neurodiag.report.cells import fmt_cell, fmt_duration, fmt_sci, is_missing, shorten_middle
from neurodiag.report.health import ERROR_DEAD_PCT
from neurodiag.report.render import UnknownFormatError
from neurodiag.report.render_html import CONTROLS, escape, html_page, png_img
from neurodiag.report.render_markdown import pipe_table

#: Figures drawn into the HTML page: alt text -> fn(comparison) -> PNG bytes; ``neurodiag.plots``
#: registers the paper's five figures (matplotlib is optional).
COMPARE_FIGURES: Registry[Callable[[Comparison], bytes]] = Registry("figure")

_SUMMARY_HEADINGS = {
    "variant": "variant",
    "activation": "activation",
    "mean_dead_pct": "mean dead %\n(scan)",
    "max_dead_pct": "max dead %\n(scan)",
    "train_mean_dead_pct": "train mean dead %\n(per batch)",
    "train_max_dead_pct": "train max dead %\n(per batch)",
    "mean_zero_output_pct": "mean zero-out %\n(scan)",
    "max_zero_output_pct": "max zero-out %\n(scan)",
    "mean_dormant_pct": "mean τ-dormant %\n(scan)",
    "max_dormant_pct": "max τ-dormant %\n(scan)",
    "first_site_mag": "first-site MAG",
    "min_abs_deriv": "min |σ'|",
    "delta_bar": "δ̄",
    "bound_ok": "bound ok",
    "loss": "loss",
    "accuracy": "accuracy",
    "time_s": "time",
}
#: Summary columns left out of the terminal table to keep it narrow (CSV, JSON, Markdown and
#: HTML have them): the other criteria show their max over sites only.
_NOT_IN_TERMINAL = frozenset({"mean_zero_output_pct", "mean_dormant_pct"})
#: Summary columns added after comparisons were first saved (see ``markdown_rows``).
_LATER_COLUMNS = frozenset(
    {"mean_zero_output_pct", "max_zero_output_pct", "mean_dormant_pct", "max_dormant_pct"}
)
_PERCENT_COLUMNS = frozenset(c for c in SUMMARY_COLUMNS if c.endswith("_pct"))


def _heading(column: str, *, one_line: bool = False) -> str:
    text = _SUMMARY_HEADINGS.get(column, column)
    return text.replace("\n", " ") if one_line else text


def criteria_lines(comparison: Comparison) -> list[str]:
    """The criteria legend: one line per criterion (definition, window), then which variants
    have which at 0 by construction and why."""
    criteria = comparison.criteria()
    lines = [
        f"{entry['label']}: {entry['definition']}; window: {entry['window']}"
        for entry in criteria.values()
    ]
    zero_keys = [key for key, entry in criteria.items() if entry["zero_when"]]
    labels = ", ".join(criteria[key]["label"] for key in zero_keys)
    reasons: dict[str, str] = {}
    for key in zero_keys:
        reasons.update(criteria[key]["zero_by_construction"])
    free = [e["label"] for e in criteria.values() if e["can_be_nonzero_for_every_activation"]]
    if reasons:
        shown = "; ".join(f"{name} ({why.split(': ', 1)[-1]})" for name, why in reasons.items())
        lines.append(f"0 by construction ({labels}): {shown}")
    else:
        lines.append(f"0 by construction ({labels}): no variant (needs every site's |σ'| > ε)")
    lines.append(
        f"{' and '.join(free)} can be non-zero for every activation (a non-zero Bernstein "
        "figure, such as the paper's < 5 %, needs one of these)"
    )
    return lines


def _cell(column: str, value: Any) -> str:
    if column in ("variant", "activation"):
        return str(value)
    if column in _PERCENT_COLUMNS:
        return "–" if is_missing(value) else fmt_cell("dead_pct", value)
    if column == "time_s":
        return fmt_duration(float(value))
    if column in ("first_site_mag", "min_abs_deriv", "delta_bar"):
        return "" if column == "delta_bar" and is_missing(value) else fmt_cell("mag", value)
    if column == "bound_ok":
        return fmt_cell("bound_ok", value)
    if column == "accuracy":
        return "–" if is_missing(value) else f"{100 * float(value):.1f}%"
    return (
        "–"
        if is_missing(value)
        else fmt_sci(float(value))
        if abs(float(value)) < 1e-3
        else f"{float(value):.4f}"
    )


def _training_facts(settings: dict[str, Any]) -> str:
    """The training knobs that differ from their defaults (weight decay, momentum, ...)."""
    defaults = {"weight_decay": 0.0, "momentum": 0.0, "schedule": "constant", "init": "model"}
    shown = [
        f"{key.replace('_', ' ')} {settings[key]}"
        for key, default in defaults.items()
        if key in settings and settings[key] != default
    ]
    return "".join(f" · {item}" for item in shown)


def _frame(comparison: Comparison, per_site: bool) -> pd.DataFrame:
    return comparison.per_site_frame() if per_site else comparison.summary_frame()


#: The compact terminal table, when the full one is wider than the console: the max over sites
#: of each criterion, the bound, loss and accuracy (no means, first-site MAG or time).
_COMPACT_HEADINGS = {
    "variant": "variant",
    "max_dead_pct": "dead %\n(scan)",
    "train_max_dead_pct": "dead %\n(batch)",
    "max_zero_output_pct": "zero-\nout %",
    "max_dormant_pct": "τ-dorm\n%",
    "min_abs_deriv": "min\n|σ'|",
    "delta_bar": "δ̄",
    "bound_ok": "bound\nok",
    "loss": "loss",
    "accuracy": "acc",
}
_COMPACT_NOTE = (
    "dead/zero-out/τ-dorm %: max over sites; (scan): post-epoch scan, (batch): per training "
    "batch, last epoch; full columns: a wider terminal, -f csv or -f json"
)
#: Variant names are never shortened below this.
_VARIANT_MIN_WIDTH = 8
_NATURAL_WIDTH = 10_000


def _summary_table(
    records: list[dict[str, Any]], headings: dict[str, str], name_width: int | None
) -> Table:
    # compact: one space between columns (SIMPLE_HEAD's separator), as in scan's table
    padding = (0, 0) if headings is _COMPACT_HEADINGS else (0, 1)
    table = Table(box=box.SIMPLE_HEAD, padding=padding, pad_edge=False, show_edge=False)
    for column in headings:
        justify: JustifyMethod = "left" if column in ("variant", "activation") else "right"
        table.add_column(headings[column], no_wrap=True, justify=justify)
    for record in records:
        cells = [_cell(c, record[c]) for c in headings]
        if name_width is not None:
            cells[0] = shorten_middle(cells[0], name_width)
        table.add_row(*cells)
    return table


def _table_width(table: Table, console: Console) -> int:
    # +1: Rich measures the combining "δ̄" heading one cell short of what it renders
    options = console.options.update_width(_NATURAL_WIDTH)
    return Measurement.get(console, options, table).maximum + 1


def _fitted_summary(
    records: list[dict[str, Any]], columns: list[str], console: Console
) -> tuple[Table, int, bool]:
    """The full table if it fits the console, else the compact one, variant names shortened
    as far as needed; its width, and whether it is the compact one."""
    full = _summary_table(records, {c: _heading(c) for c in columns}, None)
    natural = _table_width(full, console)
    if natural <= console.width:
        return full, natural, False
    compact = _summary_table(records, _COMPACT_HEADINGS, None)
    natural = _table_width(compact, console)
    if natural <= console.width:
        return compact, natural, True
    longest = max((len(str(r["variant"])) for r in records), default=0)
    room = max(longest - (natural - console.width), _VARIANT_MIN_WIDTH)
    compact = _summary_table(records, _COMPACT_HEADINGS, room)
    return compact, max(console.width, _table_width(compact, console)), True


def _labelled(console: Console, rows: list[tuple[str, str]]) -> None:
    """``label  text`` lines, the text wrapped under itself at the console's width."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for label, text in rows:
        grid.add_row(Text(label), Text(text))
    console.print(grid)


def best_lines(comparison: Comparison) -> list[tuple[str, str]]:
    """The ``best`` line (which variant to prefer, and why) and one ``flagged`` line per
    variant flagged whatever its rank."""
    best = comparison.best()
    lines = [("best", f"{best.variant}: {best.why}" if best.variant else f"none ({best.why})")]
    lines += [("flagged", f"{name}: {why}") for name, why in best.flagged.items()]
    return lines


def compare_table(comparison: Comparison, per_site: bool = False, width: int | None = None) -> str:
    """Rich text: settings and data lines, the summary table fitted to ``width`` (None: natural
    width), the best variant, the criteria, and optionally every variant's sites."""
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width or _NATURAL_WIDTH, color_system=None, force_terminal=False
    )
    _labelled(console, [("compare", _settings_text(comparison)), *_data_rows(comparison)])
    console.print()
    frame = comparison.summary_frame()
    columns = [str(c) for c in frame.columns if c not in _NOT_IN_TERMINAL]
    records = [{str(k): v for k, v in r.items()} for r in frame.to_dict("records")]
    table, table_width, compact = _fitted_summary(records, columns, console)
    lines = console.render_lines(table, console.options.update_width(table_width), new_lines=True)
    # laid out already: Rich must not crop the lines to the console (columns would vanish)
    console.print(Segments(seg for line in lines for seg in line), soft_wrap=True, end="")
    console.print()
    rows = best_lines(comparison)
    if compact:
        rows.append(("columns", _COMPACT_NOTE))
    criteria = criteria_lines(comparison)
    rows += [("criteria" if i == 0 else "", line) for i, line in enumerate(criteria)]
    _labelled(console, rows)
    if per_site:  # every scan column: natural width, like -f csv
        sites = comparison.per_site_frame()
        detail = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
        for column in sites.columns:
            detail.add_column(str(column), no_wrap=True)
        for record in sites.to_dict("records"):
            detail.add_row(*[fmt_cell(str(c), record[c]) for c in sites.columns])
        wide = console.options.update_width(_table_width(detail, console))
        lines = console.render_lines(detail, wide, new_lines=True)
        console.print(Segments(seg for line in lines for seg in line), soft_wrap=True, end="")
    notes = [("note", f"{v.name}: {note}") for v in comparison.variants for note in v.notes]
    if notes:
        _labelled(console, notes)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def compare_csv(comparison: Comparison, per_site: bool = False, *, width: int | None = None) -> str:
    return _frame(comparison, per_site).to_csv(index=False, lineterminator="\n")


def compare_json(
    comparison: Comparison, per_site: bool = False, *, width: int | None = None
) -> str:
    """Everything (``per_site`` and ``width`` do not apply: JSON always has every site)."""
    return json.dumps(comparison.to_dict(), indent=2, allow_nan=False, default=_plain) + "\n"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        item = value.item()
        return None if isinstance(item, float) and not math.isfinite(item) else item
    return str(value)


def compare_markdown(
    comparison: Comparison, per_site: bool = False, *, width: int | None = None
) -> str:
    legend = "".join(f"- {line}\n" for line in criteria_lines(comparison))
    return (
        "## neurodiag compare\n\n"
        + markdown_rows(_frame(comparison, per_site), per_site)
        + "\n\n**Dead criteria** (`mean_*`/`max_*`: over the sites)\n\n"
        + legend
    )


def markdown_rows(frame: pd.DataFrame, per_site: bool = False) -> str:
    """A summary (or per-site) frame as a pipe table, cells formatted as in the terminal.

    The zero-output and τ-dormant summary columns are left out when no row has a value: a
    comparison saved before they existed (its JSON lacks them) renders as it did then.
    """
    columns = [
        str(c)
        for c in frame.columns
        if per_site or c not in _LATER_COLUMNS or not frame[c].map(is_missing).all()
    ]
    rows = [
        [_cell(c, r[c]) if not per_site else fmt_cell(c, r[c]) for c in columns]
        for r in frame.to_dict("records")
    ]
    align = ["left" if c in ("variant", "activation", "site", "kind") else "right" for c in columns]
    return pipe_table(columns, rows, align)


def _settings_line(comparison: Comparison) -> str:
    data = "".join(f" · {label} {text}" for label, text in _data_rows(comparison))
    return f"compare  {_settings_text(comparison)}{data}"


def _data_rows(comparison: Comparison) -> list[tuple[str, str]]:
    """What the variants were trained and scanned on, and with which loss, when known (a
    synthetic input and a surrogate loss show here: issue 26)."""
    settings = comparison.settings
    return [(key, str(settings[key])) for key in ("data", "loss") if settings.get(key)]


def _settings_text(comparison: Comparison) -> str:
    settings = comparison.settings
    return (
        f"seed {comparison.seed} · epochs {comparison.epochs} · "
        f"optimizer {settings.get('optimizer')} · lr {settings.get('lr')} · "
        f"time {fmt_duration(comparison.wall_time_s)}" + _training_facts(settings)
    )


def comparison_fragment(comparison: Comparison, *, figures: bool = False) -> str:
    """The settings line and the summary table as HTML (a notebook's view of a comparison)."""
    frame = comparison.summary_frame()
    heads = "".join(f"<th>{escape(_heading(c, one_line=True))}</th>" for c in frame.columns)
    rows = []
    for record in frame.to_dict("records"):
        # the scan's error rule (report.health) applied to the variant's worst site
        dead = record.get("max_dead_pct")
        broken = record.get("bound_ok") is False or (dead or 0.0) >= ERROR_DEAD_PCT
        cells = "".join(
            f'<td data-v="{escape("" if is_missing(record[c]) else record[c])}">'
            f"{escape(_cell(str(c), record[c]))}</td>"
            for c in frame.columns
        )
        rows.append(f'<tr class="{"error" if broken else ""}">{cells}</tr>')
    table = (
        f'<table id="sites"><thead><tr>{heads}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    pictures = ""
    if figures:
        for alt, draw in COMPARE_FIGURES.items():
            try:
                pictures += png_img(alt, draw(comparison))
            except Exception as error:  # matplotlib missing, say: the table stands alone
                pictures += f"<p><em>{escape(alt)}: not drawn ({escape(error)})</em></p>"
    controls = CONTROLS if figures else ""
    legend = "".join(f"<li>{escape(line)}</li>" for line in criteria_lines(comparison))
    return (
        f"<div class='neurodiag-compare'><p>{escape(_settings_line(comparison))}</p>"
        f"{pictures}{controls}{table}<p>Dead criteria (mean/max over the sites):</p>"
        f"<ul class='criteria'>{legend}</ul></div>"
    )


def compare_html(
    comparison: Comparison, per_site: bool = False, *, width: int | None = None
) -> str:
    """One self-contained page: settings, the paper's figures inline, the sortable summary."""
    body = comparison_fragment(comparison, figures=True)
    return html_page("neurodiag compare", body)


class CompareRenderer(Protocol):
    """``fn(comparison)`` works for every renderer; ``per_site`` adds every variant's sites
    where the format has room for them, ``width`` fits the terminal table; the formats they
    do not apply to ignore them, so the registry never special-cases a format."""

    def __call__(
        self, comparison: Comparison, *, per_site: bool = ..., width: int | None = ...
    ) -> str: ...


#: Format name -> comparison renderer, in the order they are listed to users.
COMPARE_RENDERERS: Registry[CompareRenderer] = Registry(
    "format", listing="choose one of", error=UnknownFormatError
)
COMPARE_RENDERERS.update(
    {
        "table": compare_table,
        "csv": compare_csv,
        "json": compare_json,
        "markdown": compare_markdown,
        "html": compare_html,
    }
)
#: The built-in formats (``tuple(COMPARE_RENDERERS)`` also lists any registered later).
COMPARE_FORMATS: tuple[str, ...] = tuple(COMPARE_RENDERERS)

COMPARISON_VIEWS.register("html", comparison_fragment)


def render_comparison(
    comparison: Comparison, fmt: str, *, per_site: bool = False, width: int | None = None
) -> str:
    """``comparison`` in format ``fmt``; ``width`` fits the table format (None: natural)."""
    return COMPARE_RENDERERS[fmt](comparison, per_site=per_site, width=width)
