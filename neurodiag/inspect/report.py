"""``neurodiag inspect``'s output: the frame of ``inspect()`` as a Rich table, CSV, JSON,
Markdown or HTML. CSV and JSON keep full precision; table, Markdown and HTML read like the
scan report (1-decimal percentages, 3-digit scientific, an en dash for "no value")."""

from __future__ import annotations

import html
import io
import json
import math
from typing import Any, Protocol

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from neurodiag.inspect.layers import COLUMNS
from neurodiag.inspect.rows import DEAD_REL_TOL, DUPLICATE_COSINE, NU_DEAD_TOL
from neurodiag.registry import Registry
from neurodiag.report.cells import MISSING, fmt_sci
from neurodiag.report.render import UnknownFormatError
from neurodiag.report.render_html import html_page
from neurodiag.report.render_markdown import pipe_table

#: Short headings of the human formats (table, Markdown, HTML).
HEADINGS = {
    "layer": "layer",
    "kind": "kind",
    "rows": "rows",
    "dead_rows": "dead",
    "dead_rows_pct": "dead %",
    "duplicate_rows": "dup",
    "duplicate_rows_pct": "dup %",
    "nu_dead_rows": "ν-dead",
    "nu_dead_rows_pct": "ν-dead %",
    "weight_distance": "dist",
}
LEGEND = (
    f"dead: ‖row‖ and |bias| ≤ {DEAD_REL_TOL:g} × mean ‖row‖; dup: cosine > {DUPLICATE_COSINE:g} "
    f"with another row; ν-dead: Adam Σν ≤ {NU_DEAD_TOL:g}; dist: ‖W − W₀‖/‖W₀‖ "
    "(docs/inspect.md)"
)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def cell(column: str, value: Any) -> str:
    """One cell as a human reads it."""
    if _missing(value):
        return MISSING
    if column.endswith("_pct"):
        return f"{float(value):.1f}"
    if column == "weight_distance":
        return fmt_sci(float(value))
    if column in ("rows", "dead_rows", "duplicate_rows", "nu_dead_rows"):
        return f"{int(value):,}"
    return str(value)


def _cells(frame: pd.DataFrame) -> list[list[str]]:
    return [[cell(c, row[c]) for c in COLUMNS] for row in frame.to_dict(orient="records")]


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars unwrapped, NaN/NA/±inf as null."""
    if _missing(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table(frame: pd.DataFrame) -> Table:
    """The Rich table, numbers right-aligned, with the definitions as its caption."""
    out = Table(box=box.SIMPLE_HEAD, caption=LEGEND, caption_justify="left")
    for column in COLUMNS:
        numeric = column not in ("layer", "kind")
        out.add_column(HEADINGS[column], justify="right" if numeric else "left")
    for cells in _cells(frame):
        out.add_row(*cells)
    return out


def to_table(frame: pd.DataFrame, width: int | None = None) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width or 200,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        highlight=False,
        emoji=False,
        markup=False,
    )
    console.print(table(frame))
    return "".join(line.rstrip(" ") + "\n" for line in buffer.getvalue().splitlines())


def to_json(frame: pd.DataFrame, *, width: int | None = None) -> str:
    """``{"version": 1, "tolerances": {...}, "layers": [{<COLUMNS>}, ...]}``, strict JSON."""
    doc = {
        "version": 1,
        "tolerances": {
            "dead_rel": DEAD_REL_TOL,
            "duplicate_cosine": DUPLICATE_COSINE,
            "nu_dead": NU_DEAD_TOL,
        },
        "layers": [
            {str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")
        ],
    }
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def to_markdown(frame: pd.DataFrame, *, width: int | None = None) -> str:
    align = ["left" if c in ("layer", "kind") else "right" for c in COLUMNS]
    cells = [[c.replace("|", "\\|") for c in row] for row in _cells(frame)]
    return pipe_table([HEADINGS[c] for c in COLUMNS], cells, align) + f"\n{LEGEND}\n"


def to_html(frame: pd.DataFrame, *, width: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(HEADINGS[c])}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{'' if c in ('layer', 'kind') else ' class=num'}>{html.escape(v)}</td>"
            for c, v in zip(COLUMNS, cells)
        )
        + "</tr>"
        for cells in _cells(frame)
    )
    table_html = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return html_page("neurodiag inspect", f"{table_html}<p>{html.escape(LEGEND)}</p>")


class InspectRenderer(Protocol):
    """``fn(frame)`` works for every renderer; ``width`` only fits the terminal table (the
    other formats ignore it, so the registry never special-cases a format)."""

    def __call__(self, frame: pd.DataFrame, *, width: int | None = ...) -> str: ...


def to_csv(frame: pd.DataFrame, *, width: int | None = None) -> str:
    """Full precision, one row per layer (``width`` does not apply)."""
    return str(frame.to_csv(index=False, lineterminator="\n"))


#: Format name -> renderer of ``inspect()``'s frame, in the order they are listed to users.
INSPECT_RENDERERS: Registry[InspectRenderer] = Registry(
    "format", listing="choose one of", error=UnknownFormatError
)
INSPECT_RENDERERS.update(
    {
        "table": to_table,
        "csv": to_csv,
        "json": to_json,
        "markdown": to_markdown,
        "html": to_html,
    }
)
#: The built-in formats (``tuple(INSPECT_RENDERERS)`` also lists any registered later).
FORMATS: tuple[str, ...] = tuple(INSPECT_RENDERERS)


def render(frame: pd.DataFrame, fmt: str, *, width: int | None = None) -> str:
    """The frame of ``inspect()`` in ``fmt`` (one of ``INSPECT_RENDERERS``)."""
    return INSPECT_RENDERERS[fmt](frame, width=width)
