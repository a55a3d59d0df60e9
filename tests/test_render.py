"""Renderers: golden files of a fixed, hand-built Report, plus checks of what each format promises.

Every built-in format has a golden file of what ``render`` writes (``test_render_golden``);
regenerate with ``pytest --overwrite-golden`` and review the diff.

The Report is built by hand (no scan) so these tests pin the output layer only: a change in
measurement never shows up here, and a change in layout always does.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from rich.cells import cell_len
from rich.console import Console

from neurodiag.errors import NeurodiagError
from neurodiag.report import (
    COLUMNS,
    RENDERERS,
    Report,
    ScanHeader,
    is_unhealthy,
    register_renderer,
    render,
    render_table,
    severity,
    to_csv,
    to_json,
    to_markdown,
    to_table,
)
from neurodiag.report.cells import MISSING, fmt_cell, fmt_duration, fmt_sci
from tests.fixtures.reports import report_row, sample_header

Golden = Callable[[str, str], None]

BUILTIN_FORMATS = ("table", "csv", "json", "markdown", "html")


_row = report_row
HEADER = sample_header()

ROWS = [
    # A ReLU module with a quarter of its units dead: the case the tool exists for.
    _row(
        "features.relu#0", "relu", "module", 64,
        dead_pct=25.0, dormant_pct=26.5625, grad_dormant_pct=28.125,
        mag=0.0012345678901234567, min_abs_deriv=0.0, inactive_pct=61.71875,
    ),
    # A functional call site: named after its module, op and call index.
    _row(
        "encoder.layer.0.mlp:gelu#0", "gelu", "functional", 3072,
        grad_dormant_pct=1.0416666666666667, mag=3.2e-05, min_abs_deriv=1.7e-06,
        inactive_pct=0.0,
    ),
    # A Bernstein site: the only kind with delta_bar and bound_ok.
    _row(
        "head.act", "bern9", "module", 32,
        mag=0.0451, min_abs_deriv=0.0213, delta_bar=0.009, bound_ok=True,
    ),
    # Non-finite gradients: the grad statistics are NaN and nonfinite says why.
    _row(
        "decoder.act#1", "silu", "module", 128,
        dormant_pct=3.125, grad_dormant_pct=math.nan, mag=math.nan, min_abs_deriv=0.0031,
        nonfinite=17,
    ),
    # A squeeze-and-excitation gate: saturating is its job, so its dead units flag nothing.
    _row(
        "blocks.0.se.gate", "sigmoid", "module", 16, role="gate", dead_pct=12.5, mag=2.5e-4,
        min_abs_deriv=0.0,
    ),
]  # fmt: skip

ROWS_BY_SITE = {row["site"]: row for row in ROWS}
UNHEALTHY_SITES = {"features.relu#0", "decoder.act#1"}


@pytest.fixture
def report() -> Report:
    return Report(header=HEADER, rows=[dict(row) for row in ROWS])


@pytest.fixture
def partial_report() -> Report:
    header = dataclasses.replace(
        HEADER,
        partial=True,
        wall_time_s=125.4,
        seed=None,
        dead_window="batch",
        notes=("interrupted after 2 of 4 batches", "loss: model has no loss; used sum of outputs"),
    )
    return Report(header=header, rows=[dict(row) for row in ROWS])


@pytest.fixture
def restore_renderers() -> Iterator[None]:
    saved = dict(RENDERERS)
    yield
    RENDERERS.clear()
    RENDERERS.update(saved)


# --- golden files -------------------------------------------------------------------------------


def test_table_golden(report: Report, golden: Golden) -> None:
    """160 columns: the verdict, the facts, every column at its natural width."""
    golden(to_table(report, width=160, color=False), "txt")


def test_table_partial_narrow_golden(partial_report: Report, golden: Golden) -> None:
    """PARTIAL banner, notes, minutes, seed none; at 80 columns the compact columns."""
    golden(to_table(partial_report, width=80, color=False), "txt")


def test_table_only_flagged_and_top_golden(report: Report, golden: Golden) -> None:
    """--top 3 at 80 columns: flagged rows first, a line saying what is left out; the verdict
    still counts every site."""
    golden(to_table(report.shown(top=3), width=80, color=False), "txt")


def test_csv_golden(report: Report, golden: Golden) -> None:
    golden(to_csv(report), "csv")


def test_json_golden(report: Report, golden: Golden) -> None:
    golden(to_json(report), "json")


def test_markdown_golden(partial_report: Report, golden: Golden) -> None:
    golden(to_markdown(partial_report), "md")


# --- registry ---------------------------------------------------------------------------------


def test_builtin_formats_in_order() -> None:
    assert tuple(RENDERERS) == BUILTIN_FORMATS


#: Golden file extension per built-in format.
GOLDEN_EXT = {"table": "txt", "csv": "csv", "json": "json", "markdown": "md", "html": "html"}
_PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]*)"')


def _png_placeholder(text: str) -> str:
    """The inline PNG is matplotlib's drawing (its bytes follow matplotlib's version, and the
    figure has tests of its own): the golden file keeps its place and alt text, not its bytes."""

    def stub(match: re.Match[str]) -> str:
        assert base64.b64decode(match.group(1)).startswith(b"\x89PNG\r\n"), "not a PNG"
        return 'src="data:image/png;base64,PNG"'

    return _PNG.sub(stub, text)


@pytest.mark.parametrize("fmt", BUILTIN_FORMATS)
def test_render_golden(report: Report, fmt: str, golden: Golden) -> None:
    """What ``render`` writes in every format, byte for byte: a renderer change fails here."""
    golden(_png_placeholder(render(report, fmt, width=120)), GOLDEN_EXT[fmt])


def test_unknown_format_lists_valid_names(report: Report) -> None:
    expected = "unknown format 'yaml'; choose one of: table, csv, json, markdown, html"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$") as info:
        render(report, "yaml")
    assert isinstance(info.value, NeurodiagError)  # so the CLI prints one line, exit code 2


@pytest.mark.usefixtures("restore_renderers")
def test_register_renderer_refuses_silent_override(report: Report) -> None:
    def shout(report: Report, *, width: int | None = None, color: bool = False) -> str:
        return "SITES: " + ", ".join(report.sites)

    with pytest.raises(ValueError, match=r"'csv' is already registered.*overwrite=True"):
        register_renderer("csv", shout)
    assert render(report, "csv") == to_csv(report)

    register_renderer("csv", shout, overwrite=True)
    assert render(report, "csv").startswith("SITES: features.relu#0")


@pytest.mark.usefixtures("restore_renderers")
def test_registered_renderer_is_listed_and_used(report: Report) -> None:
    register_renderer("count", lambda report, **_: str(len(report.rows)))
    assert render(report, "count") == "5"
    with pytest.raises(
        ValueError, match=r"choose one of: table, csv, json, markdown, html, count$"
    ):
        render(report, "nope")


@pytest.mark.parametrize("name", ["", " csv", "csv "])
def test_register_renderer_rejects_blank_names(name: str) -> None:
    with pytest.raises(ValueError, match="non-empty word"):
        register_renderer(name, to_csv)


# --- health rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "level"),
    [
        ({}, None),
        ({"dead_pct": 0.1}, "warning"),  # a few dead units: shown apart, not an error
        ({"dead_pct": 9.99}, "warning"),
        ({"dead_pct": 10.0}, "error"),  # ERROR_DEAD_PCT
        ({"nonfinite": 1}, "error"),
        ({"delta_bar": 0.01, "bound_ok": True}, None),
        ({"delta_bar": 0.01, "bound_ok": False}, "error"),
        ({"delta_bar": 0.01, "bound_ok": np.bool_(False)}, "error"),
        ({"bound_ok": math.nan}, None),  # what to_frame gives a non-Bernstein site
        ({"dormant_pct": 90.0, "grad_dormant_pct": 90.0}, None),  # dormant is not dead
        ({"dead_pct": math.nan}, None),
        ({"dead_pct": np.float32(12.5)}, "error"),
        ({"role": "gate", "dead_pct": 50.0}, None),  # a gate saturating is its job
        ({"role": "gate", "nonfinite": 1}, "error"),  # NaN/Inf flags a gate too
        ({"role": "gate", "bound_ok": False}, None),
    ],
)
def test_severity(changes: dict[str, Any], level: str | None) -> None:
    row = _row("a.relu", "relu", "module", 8) | changes
    assert severity(row) == level
    assert is_unhealthy(row) is (level == "error")


def test_is_unhealthy_on_the_fixture(report: Report) -> None:
    assert {row["site"] for row in report.rows if is_unhealthy(row)} == UNHEALTHY_SITES


def test_flag_gates_judges_gates_like_activations(report: Report) -> None:
    flagged = {row["site"] for row in report.rows if is_unhealthy(row, flag_gates=True)}
    assert flagged == UNHEALTHY_SITES | {"blocks.0.se.gate"}
    header = dataclasses.replace(report.header, flag_gates=True)
    text = to_table(Report(header, [dict(row) for row in ROWS]))
    assert "3 of 5 sites need attention" in text
    assert "! blocks.0.se.gate" in text


# --- table --------------------------------------------------------------------------------------


def _site_lines(text: str) -> dict[str, str]:
    """site name -> its table line (only for names that fit on one line)."""
    return {
        site: line for line in text.splitlines() for site in ROWS_BY_SITE if f" {site} " in line
    }


def test_table_marks_exactly_the_unhealthy_rows(report: Report) -> None:
    lines = _site_lines(to_table(report))
    assert set(lines) == set(ROWS_BY_SITE)
    assert {site for site, line in lines.items() if line.startswith("!")} == UNHEALTHY_SITES
    assert "2 of 5 sites need attention" in to_table(report)


def test_table_cells(report: Report) -> None:
    lines = _site_lines(to_table(report))
    relu = lines["features.relu#0"].split()
    assert relu[-8:] == ["64", "25.0", "26.6", "28.1", "1.23e-3", "0", "61.7", "0"]
    assert lines["head.act"].split()[-5:] == ["2.13e-2", "9.00e-3", "✓", "0.0", "0"]
    # NaN statistics read MISSING; delta_bar and bound_ok are blank for a silu site.
    assert lines["decoder.act#1"].split()[-6:] == ["3.1", MISSING, MISSING, "3.10e-3", "0.0", "17"]


def test_table_header_block(report: Report, partial_report: Report) -> None:
    text = to_table(report, width=120)
    for fact in ("sample_models/mlp.py:build", "synthetic:batch=64", "cross_entropy",
                 "samples 256", "batches 4", "device cpu", "dtype float32", "mode eval",
                 "seed 0", "time 1.84 s", "eps 1e-8", "tau 0.1", "dead window scan"):  # fmt: skip
        assert fact in text
    assert "PARTIAL" not in text
    partial = to_table(partial_report, width=120)
    assert partial.startswith("PARTIAL")
    assert "interrupted after 2 of 4 batches" in partial
    assert "dead window batch" in partial and "seed none" in partial


@pytest.mark.parametrize("width", [40, 60, 80, 100, 120, 200])
def test_table_never_drops_a_column(report: Report, width: int) -> None:
    """Rich crops a too-wide table; here lines overflow instead, so ``nonfinite`` survives."""
    text = to_table(report, width=width)
    rows = text.split("\n─", 1)[1].splitlines()[1 : 1 + len(ROWS)]  # under the heading rule
    # one line per site, nothing folded, the last column (the NaN/Inf count) always there
    assert all(line.split()[-1].isdigit() for line in rows)
    assert rows[3].startswith("! deco") and rows[3].endswith(" 17")


def test_table_fits_the_width_when_it_can(report: Report) -> None:
    for width in (120, 200):
        lines = to_table(report, width=width).splitlines()
        assert max(cell_len(line) for line in lines) <= width  # cells: δ̄ is 2 code points
    natural = to_table(report)
    assert "encoder.layer.0.mlp:gelu#0" in natural  # width=None: nothing folded


def test_table_colour_only_when_asked(report: Report) -> None:
    assert "\x1b[" not in to_table(report, width=120, color=False)
    coloured = to_table(report, width=120, color=True)
    assert "\x1b[1;31m" in coloured  # bold red on the unhealthy rows


def test_table_shows_brackets_literally(report: Report) -> None:
    """Model specs and site names are data, never Rich markup."""
    header = dataclasses.replace(report.header, model="[bold]pkg.mod:make[/bold]")
    rows = [report.rows[0] | {"site": "blocks[0].act"}]
    buffer = io.StringIO()
    render_table(Report(header, rows), Console(file=buffer, width=120, markup=True))
    assert "[bold]pkg.mod:make[/bold]" in buffer.getvalue()
    assert "blocks[0].act" in buffer.getvalue()


def test_render_table_prints_to_a_given_console(report: Report) -> None:
    buffer = io.StringIO()
    render_table(report, Console(file=buffer, width=120, color_system=None))
    assert [line.rstrip() for line in buffer.getvalue().splitlines()] == to_table(
        report, width=120
    ).splitlines()


def test_table_of_a_report_without_sites() -> None:
    assert "no activation sites found" in to_table(Report(HEADER, []))


def test_table_rejects_a_non_positive_width(report: Report) -> None:
    with pytest.raises(ValueError, match="width must be a positive"):
        to_table(report, width=0)


@pytest.mark.parametrize(
    ("column", "value", "text"),
    [
        ("dead_pct", 26.5625, "26.6"),
        ("dead_pct", 100.0, "100.0"),
        ("dead_pct", math.nan, MISSING),
        ("mag", 0.0012345678, "1.23e-3"),
        ("mag", 123456.0, "1.23e5"),
        ("mag", 0.0, "0"),
        ("mag", math.inf, "inf"),
        ("mag", None, MISSING),
        ("min_abs_deriv", 9.996e-5, "1.00e-4"),
        ("delta_bar", math.nan, ""),
        ("delta_bar", 0.009, "9.00e-3"),
        ("bound_ok", True, "✓"),
        ("bound_ok", np.bool_(False), "✗"),
        ("bound_ok", None, ""),
        ("neurons", 3072, "3,072"),
        ("nonfinite", np.int64(17), "17"),
        ("site", "a.relu#0", "a.relu#0"),
    ],
)
def test_fmt_cell(column: str, value: Any, text: str) -> None:
    assert fmt_cell(column, value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0421, "42 ms"), (1.8372, "1.84 s"), (125.4, "2 min 05 s"), (3725.0, "1 h 02 min")],
)
def test_fmt_duration(seconds: float, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_fmt_sci_has_three_significant_digits() -> None:
    assert fmt_sci(-2.5e-12) == "-2.50e-12"


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_round_trips_through_read_csv(report: Report) -> None:
    parsed = pd.read_csv(io.StringIO(to_csv(report)))
    frame = report.to_frame()
    assert list(parsed.columns) == list(COLUMNS)
    text = ("site", "activation", "class", "kind", "role", "bound_ok")
    numeric = [c for c in COLUMNS if c not in text]
    # Exact: the CSV keeps every digit (0.0012345678901234567 is not rounded to 1.23e-3).
    pd.testing.assert_frame_equal(
        parsed[numeric], frame[numeric], check_exact=True, check_dtype=False
    )
    filled = [c for c in numeric if frame[c].notna().any()]  # an empty column reads as float
    assert (parsed[filled].dtypes == frame[filled].dtypes.replace({"Int64": "int64"})).all()
    assert parsed["site"].tolist() == report.sites
    assert parsed["bound_ok"].isna().tolist() == [True, True, False, True, True]
    assert parsed["bound_ok"][2] == True  # noqa: E712  (read_csv gives a numpy/object bool)


def test_csv_has_no_header_facts_and_empty_cells_for_missing(report: Report) -> None:
    lines = to_csv(report).splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert len(lines) == 1 + len(ROWS)
    assert (
        lines[4]
        == "decoder.act#1,silu,Silu,module,activation,128,1,0.0,,3.125,,,0.0031,,,0.0,17,,,,"
    )


# --- JSON ---------------------------------------------------------------------------------------


def _strict_loads(text: str) -> Any:
    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def test_json_document_shape(report: Report) -> None:
    document = _strict_loads(to_json(report))
    header_fields = [f.name for f in dataclasses.fields(ScanHeader)]
    assert list(document) == ["version", *header_fields, "sites"]
    assert document["version"] == 1
    assert document["model"] == HEADER.model and document["notes"] == []
    assert [list(site) for site in document["sites"]] == [list(COLUMNS)] * len(ROWS)
    decoder = document["sites"][3]
    assert decoder["mag"] is None and decoder["grad_dormant_pct"] is None
    assert decoder["nonfinite"] == 17
    assert document["sites"][2]["bound_ok"] is True
    assert document["sites"][0]["mag"] == 0.0012345678901234567  # full precision


def test_json_unwraps_numpy_and_torch_scalars() -> None:
    row = _row(
        "a.relu#0", "relu", "module", 8,
        dead_pct=np.float32(12.5), mag=torch.tensor(0.25), min_abs_deriv=np.float64(math.inf),
        delta_bar=np.float64(0.01), bound_ok=np.bool_(True), nonfinite=torch.tensor(3),
    )  # fmt: skip
    row["neurons"] = np.int64(8)
    site = _strict_loads(to_json(Report(HEADER, [row])))["sites"][0]
    assert site["neurons"] == 8 and type(site["neurons"]) is int
    assert site["dead_pct"] == 12.5 and site["mag"] == 0.25
    assert site["min_abs_deriv"] is None  # inf is not JSON; nonfinite tells the story
    assert site["bound_ok"] is True and site["nonfinite"] == 3


# --- Markdown -----------------------------------------------------------------------------------


def _pipe_cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_markdown_one_pipe_row_per_site(report: Report) -> None:
    lines = [line for line in to_markdown(report).splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(ROWS)  # heading, alignment rule, one per site
    assert _pipe_cells(lines[0]) == list(COLUMNS)
    assert all(len(_pipe_cells(line)) == len(COLUMNS) for line in lines)
    flagged = {_pipe_cells(line)[0] for line in lines[2:] if line.startswith("| **")}
    assert flagged == {f"**{site}** !" for site in UNHEALTHY_SITES}


def test_markdown_escapes_pipes(report: Report) -> None:
    row = _row("weird|name", "relu", "module", 4)
    text = to_markdown(Report(HEADER, [row]))
    lines = [line for line in text.splitlines() if line.startswith("|") and "weird" in line]
    assert len(_pipe_cells(lines[0])) == len(COLUMNS)
    assert _pipe_cells(lines[0])[0] == "weird\\|name"


def test_markdown_header_facts(partial_report: Report) -> None:
    text = to_markdown(partial_report)
    assert "- **model**: sample_models/mlp.py:build" in text
    assert "PARTIAL" in text and "- **note**: interrupted after 2 of 4 batches" in text
