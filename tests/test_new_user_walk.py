"""Issue 26 item 6, what a new user hit: a bare KeyError, --help pointing at README sections
that no longer exist, and "healthy: all 1 sites"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neurodiag.cli import app
from neurodiag.report import Report
from neurodiag.report.model import SiteNeurons
from neurodiag.report.verdict import verdict
from neurodiag.report.verdict_text import verdict_line
from tests.fixtures.reports import report_row, sample_header

ROOT = Path(__file__).resolve().parents[1]


def _report(*sites: str) -> Report:
    rows = [report_row(site, "relu") for site in sites]
    neurons = {site: SiteNeurons() for site in sites}
    return Report(header=sample_header(), rows=rows, neurons=neurons)


def test_an_unknown_site_lists_the_valid_ones() -> None:
    report = _report("features.relu", "head.act")
    with pytest.raises(KeyError) as caught:
        report.neurons["features.rel"]
    assert str(caught.value) == (
        "no site 'features.rel' in report.neurons; did you mean 'features.relu'? "
        "sites: features.relu, head.act"
    )
    assert isinstance(report.neurons["head.act"], SiteNeurons)
    assert report.neurons.get("bad") is None and "bad" not in report.neurons


@pytest.mark.parametrize("command", ["scan", "check", "compare", "treat"])
def test_help_points_only_at_sections_and_pages_that_exist(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = result.stdout
    headings = re.findall(r"^#+ (.+)$", (ROOT / "README.md").read_text("utf-8"), re.M)
    for mention in re.findall(r"README[^;\n]*", text):  # "README: 'A', 'B'" up to a ';'
        for section in re.findall(r"'([^']+)'", mention):
            assert section in headings, f"README has no section {section!r}"
    for page in re.findall(r"docs/[\w.-]+\.md", text):
        assert (ROOT / page).is_file(), page


@pytest.mark.parametrize(
    ("sites", "text"), [(1, "healthy: the 1 site"), (3, "healthy: all 3 sites")]
)
def test_healthy_verdict_counts_in_words(sites: int, text: str) -> None:
    rows = [report_row(f"s{i}", "relu") for i in range(sites)]
    assert verdict_line(verdict(rows, False)) == ("healthy", text)
