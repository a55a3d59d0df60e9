"""The verdict above every human report: severity counts, worst sites, rollups, row selection,
tables that fit on a 120-site model, the HTML report and the notebook views."""

from __future__ import annotations

import base64
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from neurodiag.cli import app
from neurodiag.report import Report, render, to_markdown, to_table, verdict
from neurodiag.report.render_html import report_fragment, to_html
from neurodiag.report.verdict import block_depth, block_of, select_rows
from tests.fixtures.reports import report_row, sample_header
from tests.test_render import ROWS

runner = CliRunner()

# A DenseNet-121-like stack (torchvision's names; tiny widths): 4 blocks × 15 layers × 2 ReLUs,
# 3 transitions and the stem: 124 sites.
DENSENET = """
import torch
from torch import nn

class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(c), nn.ReLU()
        self.conv1 = nn.Conv2d(c, 4, 1)
        self.norm2, self.relu2 = nn.BatchNorm2d(4), nn.ReLU()
        self.conv2 = nn.Conv2d(4, c, 3, padding=1)
    def forward(self, x):
        return x + self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))

LAYERS = 15

def build_model():
    torch.manual_seed(0)
    features = nn.Sequential()
    features.add_module("conv0", nn.Conv2d(3, 8, 3, padding=1))
    features.add_module("relu0", nn.ReLU())
    for b in range(1, 5):
        block = nn.Sequential()
        for i in range(1, LAYERS + 1):
            block.add_module(f"denselayer{i}", Layer(8))
        features.add_module(f"denseblock{b}", block)
        if b < 4:
            features.add_module(f"transition{b}", nn.Sequential(nn.BatchNorm2d(8), nn.ReLU()))
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
"""


def _dense_rows(n_layers: int = 15) -> list[dict[str, object]]:
    rows = [report_row("features.relu0", "relu", neurons=64, dead_pct=1.6)]
    for b in range(1, 5):
        for i in range(1, n_layers + 1):
            for j in (1, 2):
                dead = 50.0 if (b, i, j) == (4, 15, 2) else (1.5 if i % 3 == 0 else 0.0)
                rows.append(
                    report_row(
                        f"features.denseblock{b}.denselayer{i}.relu{j}",
                        "relu",
                        "module",
                        128,
                        dead_pct=dead,
                        mag=1e-3 * i,
                    )
                )
    return rows


def _report(rows: list[dict[str, object]]) -> Report:
    return Report(header=sample_header(), rows=[dict(r) for r in rows])


def test_verdict_counts_errors_warnings_and_reasons() -> None:
    v = verdict(ROWS)
    assert v.sites == 5 and set(v.errors) == {"features.relu#0", "decoder.act#1"}
    assert v.warnings == ()  # the gate's 12.5 % dead is its job
    assert dict(v.reasons) == {"≥ 10 % dead": 1, "NaN/Inf": 1}
    worst = {label: picks for label, _, picks in v.worst}
    assert worst["dead %"] == (("features.relu#0", 25.0), ("blocks.0.se.gate", 12.5))
    assert worst["lowest MAG"][0][0] == "encoder.layer.0.mlp:gelu#0"
    assert worst["NaN/Inf"] == (("decoder.act#1", 17.0),)
    assert v.by_activation[0].name in {"relu", "silu"} and v.by_activation[0].errors == 1


def test_blocks_are_the_shallowest_prefix_that_splits_the_sites() -> None:
    sites = [str(r["site"]) for r in _dense_rows()]
    assert block_depth(sites) == 2
    assert block_of("features.denseblock4.denselayer15.relu2", 2) == "features.denseblock4"
    assert block_of("encoder.layer.0.mlp:gelu#0", 3) == "encoder.layer.0"
    v = verdict(_dense_rows())
    assert v.by_block[0].name == "features.denseblock4" and v.by_block[0].errors == 1
    assert {r.name for r in v.by_block} == {"features.relu0"} | {
        f"features.denseblock{b}" for b in range(1, 5)
    }
    assert block_depth(["net.1", "net.3"]) == 0  # one block: no rollup


def test_row_selection_keeps_the_verdict_whole() -> None:
    rows = _dense_rows()
    flagged = select_rows(rows, only_flagged=True)
    assert len(flagged) == 1 + 4 * 5 * 2  # the stem, every third layer's two ReLUs, the dead one
    top = select_rows(rows, top=3)
    assert top[0]["site"] == "features.denseblock4.denselayer15.relu2"  # the error first
    assert len(top) == 3 and all(float(r["dead_pct"]) > 0 for r in top)  # type: ignore[arg-type]
    text = to_table(_report(rows).shown(top=3), width=80)
    assert "! 1 of 121 sites need attention: ≥ 10 % dead 1; 40 warnings" in text
    assert "showing 3 of 121 sites: the worst first" in text
    with pytest.raises(ValueError, match="top"):
        _report(rows).shown(top=0)


def test_a_120_site_report_fits_80_columns_with_the_verdict_first() -> None:
    text = to_table(_report(_dense_rows()), width=80)
    lines = text.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    assert lines[0].startswith("verdict") and "need attention" in lines[0]
    first_screen = "\n".join(lines[:24])
    assert "worst dead %" in first_screen and "by block" in first_screen
    row = next(line for line in lines if "denselayer15.relu2" in line)
    assert "…" in row or "features.denseblock4.denselayer15.relu2" in row  # shortened mid-name


def test_markdown_leads_with_the_verdict_and_lists_only_what_is_asked() -> None:
    text = to_markdown(_report(_dense_rows()).shown(only_flagged=True))
    assert text.index("need attention") < text.index("| site |")
    table_rows = [line for line in text.splitlines() if re.match(r"\| (\*\*)?features\.", line)]
    assert len(table_rows) == 41
    assert "41 of 121 sites shown: errors and warnings only." in text


def test_html_is_self_contained_with_every_site_flagged_first() -> None:
    rows = [dict(r) for r in ROWS]
    rows[1]["site"] = "<script>alert(1)</script>"
    page = to_html(_report(rows))
    assert page.startswith("<!DOCTYPE html>") and "need attention" in page
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # no network
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    body = page.split("<tbody>", 1)[1]
    order = [body.index(site) for site in ("features.relu#0", "decoder.act#1", "head.act")]
    assert order == sorted(order)  # errors first, then the rest in forward order
    assert body.count("<tr ") == len(ROWS)
    match = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert match and base64.b64decode(match.group(1))[:4] == b"\x89PNG"
    assert render(_report(rows), "html") == page


def test_notebook_views() -> None:
    report = _report([dict(r) for r in ROWS])
    assert repr(report) == (
        "<Report of 'sample_models/mlp.py:build': ! 2 of 5 sites need attention: ≥ 10 % dead 1 "
        "· NaN/Inf 1; worst dead % features.relu#0 25>"
    )
    fragment = report._repr_html_()
    assert fragment == report_fragment(report) and "<script" not in fragment
    assert fragment.count("<tr ") == len(ROWS)
    healthy = _report([report_row("a.relu", "relu")])
    assert "healthy: the 1 site" in repr(healthy)  # issue 26: not "all 1 sites"


@pytest.fixture()
def densenet(tmp_path: Path) -> Path:
    path = tmp_path / "densenet.py"
    path.write_text(DENSENET)
    return path


@pytest.fixture()
def small_densenet(tmp_path: Path) -> Path:
    """2 layers per block: 20 sites, for the options that need no big model."""
    path = tmp_path / "small_densenet.py"
    path.write_text(DENSENET.replace("LAYERS = 15", "LAYERS = 2"))
    return path


def test_scan_of_a_124_site_model_fits_80_columns_when_piped(
    densenet: Path, small_densenet: Path
) -> None:
    """A new user's view: ``neurodiag scan`` piped at COLUMNS=80."""
    result = runner.invoke(
        app,
        ["scan", str(densenet), "--input-shape", "3,8,8", "--max-batches", "1", "--no-progress"],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    assert lines[0].startswith("verdict") and "124 sites" in lines[0]
    assert sum(1 for line in lines if "denselayer" in line) >= 120  # every site is listed
    top = runner.invoke(
        app,
        [
            "scan",
            str(small_densenet),
            "--input-shape",
            "3,8,8",
            "--max-batches",
            "1",
            "--top",
            "5",
            "--format",
            "markdown",
            "--no-progress",
        ],
    )
    assert top.exit_code == 0, top.stderr
    table = [line for line in top.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 5  # heading, alignment rule, the 5 worst sites


def test_scan_writes_an_html_report(small_densenet: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    result = runner.invoke(
        app,
        [
            "scan",
            str(small_densenet),
            "--input-shape",
            "3,8,8",
            "--max-batches",
            "1",
            "-f",
            "html",
            "-o",
            str(target),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.stderr
    page = target.read_text(encoding="utf-8")
    assert page.count("<tr ") == 20 and 'id="sites"' in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt install chromium)")
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """The page opens in a real browser and the screenshot shows something (the verdict's
    red banner, the table), not a blank page."""
    pytest.importorskip("matplotlib")
    from matplotlib import image

    page = tmp_path / "report.html"
    page.write_text(to_html(_report(_dense_rows())), encoding="utf-8")
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
        f"--screenshot={shot}",
    ]
    subprocess.run(
        [str(CHROMIUM), *flags, page.as_uri()], check=True, timeout=120, capture_output=True
    )
    pixels = image.imread(str(shot))
    assert pixels.shape[0] >= 800 and pixels.shape[1] >= 1200
    assert float(pixels[..., :3].std()) > 0.05  # not one flat colour
    red = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.95) & (pixels[..., 2] < 0.95)
    assert int(red.sum()) > 1000  # the error banner is drawn
    # the script ran: it counted the rows into the controls line
    dom = subprocess.run(
        [str(CHROMIUM), *flags[:-2], "--dump-dom", page.as_uri()],
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    ).stdout
    assert "121 of 121 rows" in dom


def test_severity_threshold_is_documented() -> None:
    """The README states the default error threshold the code uses."""
    from neurodiag.report import ERROR_DEAD_PCT

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert f"{ERROR_DEAD_PCT:g} %" in readme and "warning" in readme


def test_report_view_is_not_shared_between_copies() -> None:
    report = _report([dict(r) for r in ROWS])
    shown = report.shown(only_flagged=True)
    assert report.view.only_flagged is False and shown.view.only_flagged is True
    assert shown.rows is report.rows
    assert dataclasses.replace(shown).view == shown.view


@pytest.mark.parametrize("width", [1, 2, 5, 12, 24, 38])
def test_shorten_middle_keeps_both_ends_at_exactly_the_width(width: int) -> None:
    from neurodiag.report.cells import shorten_middle

    name = "features.denseblock4.denselayer16.relu2"  # 39 characters
    short = shorten_middle(name, width)
    assert len(short) == width and (width == 1 or "…" in short)
    head, _, tail = short.partition("…")
    assert name.startswith(head) and name.endswith(tail)
    assert len(tail) >= len(head)  # the leaf name is what a reader looks for
    assert shorten_middle(name, 39) == name and shorten_middle(name, 80) == name
