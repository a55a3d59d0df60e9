"""The health gate: thresholds, config precedence, baselines, output formats and the CLI.

Library tests run on hand-built Reports (the numbers are chosen, not measured), so a change in
measurement never shows up here; the CLI tests scan a model whose first ReLU site is 50% dead by
construction (bias[:4] = -100 in front of it), so the expected verdict is known exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from neurodiag.check import (
    CheckResult,
    ThresholdConfig,
    Thresholds,
    compare_to_baseline,
    evaluate,
    load_baseline,
    load_thresholds,
    render_check,
    save_baseline,
)
from neurodiag.check.config import parse_config
from neurodiag.check.render_data import VIOLATION_COLUMNS, junit_classname
from neurodiag.check.render_text import write_step_summary
from neurodiag.cli import app
from neurodiag.errors import NeurodiagError
from neurodiag.report import Report, to_json
from tests.fixtures.reports import report_row, sample_header

Golden = Callable[[str, str], None]
runner = CliRunner()

# --- a fixed, hand-built report ---------------------------------------------------------------


_row = functools.partial(report_row, mag=1e-3)
HEADER = sample_header(eps=1e-3)

ROWS = [
    # A quarter dead: fails max_dead_pct 20 from the config's thresholds.
    _row("stem.act", "tanh", dead_pct=25.0, dormant_pct=26.5625, mag=1.2345e-3),
    # ReLU sites get the relu activation rule (40) instead: the first fails, the second passes.
    _row("features.relu#0", "relu", dead_pct=45.3125, dormant_pct=50.0, mag=8.1e-4),
    _row("features.relu#1", "relu", dead_pct=37.5, dormant_pct=40.0, mag=8.1e-4),
    # Functional GELU with a tiny MAG: fails min_mag from the site rule for "encoder.*".
    _row("encoder.layer.0.mlp:gelu#0", "gelu", "functional", mag=3.2e-7, min_abs_deriv=1.7e-6),
    # Bernstein with a broken bound: always a violation.
    _row("head.act", "bern9", mag=0.0451, min_abs_deriv=0.0021, delta_bar=0.0045, bound_ok=False),
    # No gradient reached it and NaN/Inf was seen: nonfinite and the missing MAG both fail.
    _row("decoder.act#1", "silu", grad_dormant_pct=math.nan, mag=math.nan, nonfinite=17),
]

CONFIG_DOC = {
    "thresholds": {"max_dead_pct": 20, "min_mag": "1e-8", "max_nonfinite": 0},
    "activations": {"relu": {"max_dead_pct": 40}},
    "sites": {"encoder.*": {"min_mag": 1e-5}},
}


@pytest.fixture
def report() -> Report:
    return Report(header=HEADER, rows=[dict(row) for row in ROWS])


@pytest.fixture
def config() -> ThresholdConfig:
    return ThresholdConfig.from_layers([parse_config(CONFIG_DOC, "ci.yaml")])


@pytest.fixture
def result(report: Report, config: ThresholdConfig) -> CheckResult:
    return evaluate(report, config)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pick up a pyproject.toml [tool.neurodiag] from the checkout or above."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


# --- evaluate ---------------------------------------------------------------------------------


def test_violations_of_the_fixed_report(result: CheckResult) -> None:
    found = {(v.site, v.metric, v.rule) for v in result.violations}
    assert found == {
        ("stem.act", "dead_pct", "max_dead_pct"),
        ("features.relu#0", "dead_pct", "max_dead_pct"),
        ("encoder.layer.0.mlp:gelu#0", "mag", "min_mag"),
        ("head.act", "min_abs_deriv", "bound_ok"),
        ("decoder.act#1", "mag", "min_mag"),
        ("decoder.act#1", "nonfinite", "max_nonfinite"),
    }
    assert not result.ok
    assert [s.status for s in result.sites] == ["fail", "fail", "ok", "fail", "fail", "fail"]


def test_violation_records_value_threshold_and_source(result: CheckResult) -> None:
    dead = result.violations[0]
    assert (dead.site, dead.value, dead.threshold, dead.op) == ("stem.act", 25.0, 20.0, ">")
    assert dead.source == "thresholds in ci.yaml"
    assert dead.describe() == "dead_pct 25.0 > 20"
    assert dead.describe(units=True) == "dead_pct 25.0% > 20%"
    relu = result.violations[1]
    assert (relu.threshold, relu.source) == (40.0, "activations['relu'] in ci.yaml")
    assert relu.describe() == "dead_pct 45.3 > 40"
    gelu = next(v for v in result.violations if v.site.startswith("encoder"))
    assert gelu.source == "sites['encoder.*'] in ci.yaml"
    assert gelu.describe() == "mag 3.20e-7 < 1e-5"


def test_limit_is_inclusive_and_float_noise_is_not_a_violation(report: Report) -> None:
    rows = [_row("a", "relu", dead_pct=7.0), _row("b", "relu", dead_pct=7 / 100 * 100)]
    assert 7 / 100 * 100 != 7.0  # the float noise this test is about (7 dead of 100)
    assert evaluate(dataclasses.replace(report, rows=rows), {"max_dead_pct": 7}).ok
    rows = [_row("a", "relu", dead_pct=7.1)]
    assert not evaluate(dataclasses.replace(report, rows=rows), {"max_dead_pct": 7}).ok


def test_missing_value_fails_only_a_threshold_that_is_set(report: Report) -> None:
    rows = [_row("aux", "relu", mag=math.nan, grad_dormant_pct=math.nan)]
    silent = dataclasses.replace(report, rows=rows)
    assert evaluate(silent, {"max_dead_pct": 10}).ok
    result = evaluate(silent, {"min_mag": 1e-8, "max_grad_dormant_pct": 50})
    assert {v.metric for v in result.violations} == {"mag", "grad_dormant_pct"}
    assert all(v.value is None and "no gradient" in v.reason for v in result.violations)
    assert result.violations[0].describe() == "grad_dormant_pct no value (needs ≤ 50)"


def test_builtin_defaults_check_nonfinite_and_bernstein_only(report: Report) -> None:
    result = evaluate(report)
    assert {(v.site, v.rule) for v in result.violations} == {
        ("head.act", "bound_ok"),
        ("decoder.act#1", "max_nonfinite"),
    }
    assert result.thresholds == Thresholds()


def test_bound_ok_none_or_true_never_fails(report: Report) -> None:
    rows = [_row("a", "relu"), _row("b", "bern9", delta_bar=0.0045, bound_ok=True)]
    assert evaluate(dataclasses.replace(report, rows=rows)).ok


@pytest.mark.parametrize(
    "thresholds,fragment",
    [
        ({"max_ded_pct": 3}, "unknown key 'max_ded_pct' (did you mean 'max_dead_pct'?)"),
        ({"max_dead_pct": 130}, "'max_dead_pct' must be a percentage between 0 and 100"),
        ({"max_dead_pct": True}, "'max_dead_pct' must be"),
        ({"min_mag": "__import__('os')"}, "'min_mag' must be a non-negative number"),
        ({"min_mag": -1}, "'min_mag' must be a non-negative number"),
        ({"max_nonfinite": 1.5}, "'max_nonfinite' must be a non-negative integer"),
    ],
)
def test_bad_thresholds_are_errors_naming_the_key(
    report: Report, thresholds: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(NeurodiagError) as info:
        evaluate(report, thresholds)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# --- config and precedence --------------------------------------------------------------------


def _write_pyproject(folder: Path, body: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text('[project]\nname = "demo"\n\n' + body)
    return path


PYPROJECT = """
[tool.neurodiag.thresholds]
max_dead_pct = 10
min_mag = 1e-9

[tool.neurodiag.activations]
gelu = { max_dormant_pct = 5 }
"""

YAML = """
thresholds:
  max_dead_pct: 20
activations:
  relu: {max_dead_pct: 40}
sites:
  "features.relu#1": {max_dead_pct: 60}
  "features.*": {max_dead_pct: 50, min_mag: null}
"""


@pytest.fixture
def layered(tmp_path: Path) -> tuple[Path, Path]:
    _write_pyproject(tmp_path, PYPROJECT)
    yaml_path = tmp_path / "ci.yaml"
    yaml_path.write_text(YAML)
    return tmp_path, yaml_path


def _limit(config: ThresholdConfig, site: str, activation: str, key: str) -> Any:
    return config.for_site(site, activation).to_dict()[key]


def test_precedence_site_activation_flag_yaml_pyproject_default(
    layered: tuple[Path, Path],
) -> None:
    root, yaml_path = layered
    full = load_thresholds(yaml_path, {"max_dead_pct": 30}, search_from=root)
    assert _limit(full, "features.relu#0", "relu", "max_dead_pct") == 50  # site glob
    assert _limit(full, "block.relu", "relu", "max_dead_pct") == 40  # activation rule
    assert _limit(full, "block.gelu", "gelu", "max_dead_pct") == 30  # flag
    no_flag = load_thresholds(yaml_path, search_from=root)
    assert _limit(no_flag, "block.gelu", "gelu", "max_dead_pct") == 20  # --config thresholds
    no_yaml = load_thresholds(None, search_from=root)
    assert _limit(no_yaml, "block.gelu", "gelu", "max_dead_pct") == 10  # pyproject
    nothing = load_thresholds(None, search_from=None)
    assert _limit(nothing, "block.gelu", "gelu", "max_dead_pct") is None  # default: unchecked
    assert _limit(nothing, "block.gelu", "gelu", "max_nonfinite") == 0


def test_layers_merge_key_by_key_and_null_switches_a_key_off(layered: tuple[Path, Path]) -> None:
    root, yaml_path = layered
    config = load_thresholds(yaml_path, {"max_dead_pct": 30}, search_from=root)
    # min_mag comes from pyproject although max_dead_pct comes from the flag...
    assert config.for_site("block.gelu", "gelu").min_mag == 1e-9
    # ...pyproject's gelu rule still applies (activations from both files)...
    assert config.for_site("block.gelu", "gelu").max_dormant_pct == 5
    # ...and a site rule's null switches min_mag off for that site only.
    assert config.for_site("features.relu#0", "relu").min_mag is None
    _, sources = config.resolve("features.relu#0", "relu")
    assert sources["max_dead_pct"] == f"sites['features.*'] in {yaml_path}"


def test_site_globs_first_match_wins(layered: tuple[Path, Path]) -> None:
    root, yaml_path = layered
    config = load_thresholds(yaml_path, search_from=root)
    assert config.for_site("features.relu#1", "relu").max_dead_pct == 60
    # The first rule set no min_mag, and the later "features.*" (null) is not consulted.
    assert config.for_site("features.relu#1", "relu").min_mag == 1e-9


def test_activation_names_match_case_insensitively() -> None:
    config = ThresholdConfig.from_layers(
        [parse_config({"activations": {"GELUActivation": {"max_dead_pct": 1}}}, "x")]
    )
    assert config.for_site("bert.act", "geluactivation").max_dead_pct == 1
    assert config.for_site("bert.act", "gelu").max_dead_pct is None


def test_pyproject_is_found_in_a_parent_and_one_without_the_table_is_skipped(
    tmp_path: Path,
) -> None:
    _write_pyproject(tmp_path, "[tool.neurodiag.thresholds]\nmax_dead_pct = 12\n")
    package = tmp_path / "packages" / "model"
    package.mkdir(parents=True)
    _write_pyproject(package, "[tool.ruff]\nline-length = 100\n")
    config = load_thresholds(search_from=package)
    assert config.base.max_dead_pct == 12
    assert config.sources == (f"{tmp_path / 'pyproject.toml'} [tool.neurodiag]",)


def test_pyproject_from_the_current_directory_by_default(tmp_path: Path) -> None:
    _write_pyproject(Path.cwd(), "[tool.neurodiag.thresholds]\nmax_dormant_pct = 7\n")
    assert load_thresholds().base.max_dormant_pct == 7


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("thresholds: {min_mag: 1e-8}\n")  # PyYAML reads this as the string "1e-8"
    assert load_thresholds(path, search_from=None).base.min_mag == 1e-8


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("thresholdz: {}\n", "unknown key 'thresholdz' (did you mean 'thresholds'?)"),
        ("thresholds: {max_dead: 3}\n", "thresholds: unknown key 'max_dead'"),
        ("sites: {'enc*': {max_dead_pct: lots}}\n", "sites['enc*']: 'max_dead_pct' must be"),
        ("activations: [relu]\n", "'activations' must be a mapping"),
        ("thresholds: [1, 2]\n", "thresholds must be a mapping"),
        ("sites: {'a': 3}\n", "sites['a'] must be a mapping"),
        ("thresholds: {max_dead_pct: [unclosed\n", "not valid YAML at line"),
        ("- 1\n", "must be a mapping with keys thresholds, activations, sites"),
    ],
)
def test_bad_config_file_is_one_line_naming_the_key(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(NeurodiagError) as info:
        load_thresholds(path, search_from=None)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_pyproject_table_names_the_file_and_key(tmp_path: Path) -> None:
    _write_pyproject(tmp_path, "[tool.neurodiag]\nthreshold = 3\n")
    with pytest.raises(NeurodiagError, match=r"pyproject.toml \[tool.neurodiag\]: unknown key"):
        load_thresholds(search_from=tmp_path)


# --- baseline ---------------------------------------------------------------------------------


def _with(report: Report, site: str, **changes: Any) -> Report:
    rows = [dict(row) | changes if row["site"] == site else dict(row) for row in report.rows]
    return dataclasses.replace(report, rows=rows)


@pytest.mark.parametrize(
    "changes,tolerance,regressed",
    [
        ({"dead_pct": 25.9}, 1.0, False),  # within 1 point
        ({"dead_pct": 26.0}, 1.0, False),  # exactly at the tolerance passes
        ({"dead_pct": 26.5}, 1.0, True),
        ({"dead_pct": 26.5}, 2.0, False),  # a wider tolerance lets it through
        ({"dead_pct": 10.0}, 0.0, False),  # improvements never fail
        ({"dormant_pct": 30.0}, 1.0, True),
        ({"mag": 1.2345e-3 / 1.9}, 1.0, False),  # MAG shrank, but less than a factor 2
        ({"mag": 1.2345e-3 / 2.1}, 1.0, True),
        ({"mag": math.nan}, 1.0, True),  # gradient stopped reaching the site
        ({"nonfinite": 1}, 1.0, True),
        ({"min_abs_deriv": 0.0}, 1.0, False),  # not compared (see baseline.py)
    ],
)
def test_baseline_regressions_against_tolerance(
    report: Report, changes: dict[str, Any], tolerance: float, regressed: bool
) -> None:
    current = _with(report, "stem.act", **changes)
    result = compare_to_baseline(current, report, tolerance=tolerance, name="b.json")
    assert result.ok is not regressed
    assert all(v.rule == "regression" and v.site == "stem.act" for v in result.violations)


def test_baseline_known_problems_do_not_fail(report: Report) -> None:
    """The bound already broken and NaN already present in the baseline are not regressions."""
    assert compare_to_baseline(report, report).ok


def test_baseline_bound_that_breaks_is_a_regression(report: Report) -> None:
    before = _with(report, "head.act", bound_ok=True)
    result = compare_to_baseline(report, before)
    assert [(v.site, v.metric) for v in result.violations] == [("head.act", "min_abs_deriv")]


def test_baseline_new_sites_are_listed_not_failed(report: Report) -> None:
    old = dataclasses.replace(report, rows=[dict(row) for row in report.rows[1:]])
    old = dataclasses.replace(old, rows=[*old.rows, _row("gone.relu", "relu")])
    result = compare_to_baseline(report, old, name="b.json")
    assert result.ok
    assert result.baseline is not None
    assert result.baseline.new_sites == ("stem.act",)
    assert result.baseline.removed_sites == ("gone.relu",)
    assert result.sites[0].status == "new"
    assert "::notice title=neurodiag::1 new site not in the baseline" in render_check(
        result, "github"
    )


def test_baseline_with_other_eps_is_an_error(report: Report) -> None:
    old = dataclasses.replace(report, header=dataclasses.replace(HEADER, eps=0.01))
    with pytest.raises(NeurodiagError, match=r"eps 0\.01, this scan with eps 0\.001"):
        compare_to_baseline(report, old)


def test_baseline_file_round_trip_is_the_scan_json(report: Report, tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    save_baseline(report, path)
    saved = json.loads(path.read_text())
    assert "wall_time_s" not in saved  # run-to-run noise stays out of the committed file
    assert saved == {k: v for k, v in json.loads(to_json(report)).items() if k != "wall_time_s"}
    again = load_baseline(path)
    assert again.header == dataclasses.replace(report.header, wall_time_s=0.0)
    save_baseline(again, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    "text,fragment",
    [
        (None, "not found; write one with"),
        ("{not json", "cannot read baseline"),
        ('{"version": 1}', "not a neurodiag scan report"),
        ('{"version": 99, "sites": []}', "report version 99"),
    ],
)
def test_bad_baseline_file(tmp_path: Path, text: str | None, fragment: str) -> None:
    path = tmp_path / "b.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(NeurodiagError, match=fragment):
        load_baseline(path)


# --- output formats of the fixed result -------------------------------------------------------


def test_check_table_golden(result: CheckResult, golden: Golden) -> None:
    golden(render_check(result, "table", width=120), "txt")


def test_check_markdown_golden(result: CheckResult, golden: Golden) -> None:
    golden(render_check(result, "markdown"), "md")


def test_check_junit_golden(result: CheckResult, golden: Golden) -> None:
    golden(render_check(result, "junit"), "xml")


def test_check_github_golden(result: CheckResult, golden: Golden) -> None:
    golden(render_check(result, "github"), "txt")


def test_junit_has_one_testcase_per_site_and_a_failure_per_violation(
    result: CheckResult,
) -> None:
    root = ET.fromstring(render_check(result, "junit"))
    cases = root.findall("./testsuite/testcase")
    assert [case.get("name") for case in cases] == [row["site"] for row in ROWS]
    failures = {case.get("name"): len(case.findall("failure")) for case in cases}
    assert failures == {
        "stem.act": 1,
        "features.relu#0": 1,
        "features.relu#1": 0,
        "encoder.layer.0.mlp:gelu#0": 1,
        "head.act": 1,
        "decoder.act#1": 2,
    }
    assert root.find("testsuite").get("failures") == "5"  # type: ignore[union-attr]


def test_json_has_verdict_thresholds_and_scan_rows(result: CheckResult) -> None:
    doc = json.loads(render_check(result, "json"))
    assert doc["ok"] is False and doc["check"] == "thresholds"
    assert doc["thresholds"] == {"max_dead_pct": 20, "min_mag": 1e-8, "max_nonfinite": 0}
    assert doc["overrides"]["sites"] == {"encoder.*": {"min_mag": 1e-5}}
    assert len(doc["violations"]) == 6 and doc["violations"][0]["value"] == 25.0
    decoder = doc["sites"][5]
    assert decoder["mag"] is None and decoder["status"] == "fail"  # NaN -> null, strict JSON
    assert doc["sites"][2]["thresholds"]["max_dead_pct"] == 40
    assert doc["model"] == HEADER.model and doc["version"] == 1


def test_csv_parses_with_pandas(result: CheckResult) -> None:
    frame = pd.read_csv(io.StringIO(render_check(result, "csv")), dtype={"site": str})
    assert tuple(frame.columns) == VIOLATION_COLUMNS and len(frame) == 6
    assert frame.loc[0, "value"] == 25.0 and frame.loc[0, "threshold"] == 20.0
    assert frame["value"].isna().tolist()[4]  # the missing MAG is an empty cell


def test_csv_without_violations_is_a_header(report: Report) -> None:
    healthy = dataclasses.replace(report, rows=[_row("a", "relu")])
    text = render_check(evaluate(healthy), "csv")
    assert next(csv.reader(io.StringIO(text))) == list(VIOLATION_COLUMNS)
    assert pd.read_csv(io.StringIO(text)).empty


def test_github_escapes_newlines_and_percent(report: Report) -> None:
    rows = [_row("weird%\nsite", "relu", dead_pct=90.0)]
    text = render_check(
        evaluate(dataclasses.replace(report, rows=rows), {"max_dead_pct": 1}), "github"
    )
    assert text.splitlines()[0].startswith(
        "::error file=sample_models/mlp.py,title=neurodiag::site weird%25%0Asite: dead_pct"
    )


def test_unknown_check_format_lists_the_valid_ones(result: CheckResult) -> None:
    with pytest.raises(NeurodiagError, match="choose one of: table, json, junit, github"):
        render_check(result, "yaml")


# --- the CLI ----------------------------------------------------------------------------------

DEAD_HALF = """
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias[:4] = -100.0  # site "1" is exactly 50% dead by construction
    return model
"""


@pytest.fixture
def model_file(tmp_path: Path) -> str:
    path = tmp_path / "dead_half.py"
    path.write_text(DEAD_HALF)
    return str(path)


def _check(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["check", *args, "--max-batches", "1"])
    return result.exit_code, result.stdout, result.stderr


def test_done_criterion_half_dead_site_fails_at_30_passes_at_60(model_file: str) -> None:
    code, out, err = _check(model_file, "--max-dead-pct", "30")
    assert code == 1, err
    assert "FAIL: 1 violation at 1 of 2 sites" in out
    line = next(line for line in out.splitlines() if "dead_pct" in line)
    assert line.split()[:4] == ["1", "dead_pct", "50.0", "≤"]
    code, out, err = _check(model_file, "--max-dead-pct", "60")
    assert code == 0, err + out
    assert "OK: 2 sites checked, no violations" in out


@pytest.mark.parametrize("fmt", ["table", "json", "junit", "github", "markdown", "csv", "html"])
def test_every_format_from_the_cli_parses(model_file: str, fmt: str) -> None:
    code, out, err = _check(model_file, "--max-dead-pct", "30", "-f", fmt)
    assert code == 1, err
    if fmt == "json":
        doc = json.loads(out)
        assert doc["ok"] is False and doc["violations"][0]["site"] == "1"
    elif fmt == "junit":
        root = ET.fromstring(out)
        assert root.find("./testsuite/testcase/failure") is not None
    elif fmt == "github":
        lines = out.splitlines()
        assert lines[0].startswith("::error file=") and lines[0].endswith(
            "dead_half.py,title=neurodiag::site 1: dead_pct 50.0 > 30 "
            "(max_dead_pct set by --max-dead-pct)"
        )
        assert lines[-1].startswith("::notice title=neurodiag::FAIL")
    elif fmt == "csv":
        frame = pd.read_csv(io.StringIO(out), dtype={"site": str})
        assert frame.loc[0, ["site", "metric", "value"]].tolist() == ["1", "dead_pct", 50.0]
    elif fmt == "html":
        assert out.startswith("<!DOCTYPE html>") and 'class="verdict error">FAIL' in out
        assert "<td>dead_pct</td><td>50.0</td>" in out and 'id="sites"' in out  # + the scan
    else:
        assert "50.0" in out and "dead_pct" in out


def test_output_file_and_junit_side_file(model_file: str, tmp_path: Path) -> None:
    junit, md = tmp_path / "report.xml", tmp_path / "check.md"
    code, out, err = _check(
        model_file,
        "--max-dead-pct",
        "30",
        "-f",
        "markdown",
        "-o",
        str(md),
        "--junit-xml",
        str(junit),
    )
    assert code == 1 and out == "", err
    assert md.read_text().startswith("## ❌ neurodiag check")
    assert ET.parse(junit).getroot().tag == "testsuites"


def test_check_runs_the_same_scan_as_scan(model_file: str) -> None:
    result = runner.invoke(app, ["scan", model_file, "-f", "json", "--max-batches", "1"])
    scanned = json.loads(result.stdout)["sites"]
    code, out, _ = _check(model_file, "-f", "json")
    checked = [
        {k: v for k, v in row.items() if k not in ("status", "thresholds")}
        for row in json.loads(out)["sites"]
    ]
    assert code == 0 and checked == scanned


def test_check_has_every_scan_option() -> None:
    """Guards the copy of scan's options in cli/check.py: a new scan option must be added too."""
    group: Any = typer.main.get_command(app)

    def options(name: str) -> dict[str, tuple[Any, ...]]:
        command = group.commands[name]  # a click Group (typer vendors click)
        return {
            p.name or "": (tuple(p.opts), repr(getattr(p, "type", None)), p.default)
            for p in command.params
            # report-view options: check lists violations, not the site table
            if p.name not in ("fmt", "only_flagged", "top")
        }

    scan, check = options("scan"), options("check")
    missing = {name: decl for name, decl in scan.items() if check.get(name) != decl}
    assert not missing, f"check lacks (or declares differently) scan options: {missing}"


def test_precedence_end_to_end(model_file: str) -> None:
    _write_pyproject(Path.cwd(), "[tool.neurodiag.thresholds]\nmax_dead_pct = 10\n")
    code, out, _ = _check(model_file)
    assert code == 1 and "thresholds in" in out and "pyproject.toml" in out
    assert _check(model_file, "--max-dead-pct", "60")[0] == 0  # a flag beats pyproject
    Path("ci.yaml").write_text("sites:\n  '1': {max_dead_pct: 40}\n")
    code, out, _ = _check(model_file, "--max-dead-pct", "60", "--config", "ci.yaml")
    assert code == 1 and "sites['1'] in ci.yaml" in out  # a site rule beats the flag
    Path("ci.yaml").write_text("activations:\n  relu: {max_dead_pct: 55}\n")
    assert _check(model_file, "--config", "ci.yaml")[0] == 0  # activation rule beats pyproject


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--config", "missing.yaml"], "config file 'missing.yaml' not found"),
        (["--config", "{bad}"], "unknown key 'max_dead' (did you mean 'max_dead_pct'?)"),
        (["--update-baseline"], "--update-baseline needs --baseline FILE"),
        (["--baseline", "missing.json"], "baseline 'missing.json' not found"),
        (["-f", "csv", "-o", "/nonexistent-dir/x.csv"], "cannot write --output"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    model_file: str, args: list[str], fragment: str
) -> None:
    Path("bad.yaml").write_text("thresholds:\n  max_dead: 3\n")
    code, out, err = _check(model_file, *[a.replace("{bad}", "bad.yaml") for a in args])
    assert code == 2, out + err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_out_of_range_flag_is_a_usage_error(model_file: str) -> None:
    assert _check(model_file, "--max-dead-pct", "150")[0] == 2


def test_update_baseline_round_trip(model_file: str) -> None:
    code, out, err = _check(model_file, "--baseline", "b.json", "--update-baseline")
    assert code == 0 and out == "" and "wrote baseline b.json (2 sites)" in err
    saved = json.loads(Path("b.json").read_text())
    scanned = runner.invoke(app, ["scan", model_file, "-f", "json", "--max-batches", "1"]).stdout
    assert saved["sites"] == json.loads(scanned)["sites"]  # the same format as scan -f json

    code, out, err = _check(model_file, "--baseline", "b.json")
    assert code == 0, err + out
    assert "OK: 2 sites compared with baseline b.json, no regressions" in out

    saved["sites"][0]["dead_pct"] = 40.0  # pretend the model used to be healthier
    del saved["sites"][1]  # and had no GELU site
    Path("b.json").write_text(json.dumps(saved))
    code, out, _ = _check(model_file, "--baseline", "b.json", "-f", "github")
    assert code == 1
    assert "title=neurodiag::site 1: dead_pct 50.0 > 41.0 (was 40.0" in out.splitlines()[0]
    assert "1 new site not in the baseline: 3" in out
    assert _check(model_file, "--baseline", "b.json", "--tolerance", "10")[0] == 0


def test_forward_only_gate_checks_forward_thresholds_and_refuses_gradient_ones(
    model_file: str,
) -> None:
    code, out, err = _check(model_file, "--forward-only", "--max-dead-pct", "30")
    assert code == 1, err  # site "1" is 50 % dead, measured without a backward
    assert "FAIL: 1 violation at 1 of 2 sites" in out
    code, out, err = _check(model_file, "--forward-only", "--max-dead-pct", "60")
    assert code == 0, err + out
    code, _, err = _check(model_file, "--forward-only", "--min-mag", "1e-9")
    assert code == 2 and "--forward-only measures no gradients" in err and "min-mag" in err
    assert len(err.strip().splitlines()) == 1


# --- issue 13: a baseline knows what it was made on ---------------------------------------------


def _saved_baseline(model_file: str) -> dict[str, object]:
    code, _, err = _check(model_file, "--baseline", "b.json", "--update-baseline")
    assert code == 0, err
    saved: dict[str, object] = json.loads(Path("b.json").read_text())
    return saved


def test_baseline_from_another_model_is_refused_naming_it(model_file: str, tmp_path: Path) -> None:
    _saved_baseline(model_file)
    other = tmp_path / "other.py"
    other.write_text(DEAD_HALF)
    code, _, err = _check(str(other), "--baseline", "b.json")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "was made on model" in err and "other.py" in err and "dead_half.py" in err


@pytest.mark.parametrize(("key", "value"), [("samples", 999), ("batches", 9), ("data", "x.pt")])
def test_baseline_on_other_data_is_refused_naming_it(
    model_file: str, key: str, value: object
) -> None:
    saved = _saved_baseline(model_file)
    saved[key] = value
    Path("b.json").write_text(json.dumps(saved))
    code, _, err = _check(model_file, "--baseline", "b.json")
    assert code == 2 and f"was made on {key} {value!r}" in err, err


def test_update_baseline_twice_writes_the_same_bytes(model_file: str) -> None:
    _saved_baseline(model_file)
    first = Path("b.json").read_bytes()
    _saved_baseline(model_file)
    assert Path("b.json").read_bytes() == first


def test_thresholds_and_a_baseline_gate_together(model_file: str) -> None:
    _saved_baseline(model_file)
    assert _check(model_file, "--baseline", "b.json")[0] == 0  # no regression
    code, out, _ = _check(model_file, "--baseline", "b.json", "--max-dead-pct", "30")
    assert code == 1 and "dead_pct" in out and "50.0" in out  # fails without a regression
    assert _check(model_file, "--baseline", "b.json", "--max-dead-pct", "60")[0] == 0


def test_baseline_without_a_header_is_one_line(model_file: str) -> None:
    Path("b.json").write_text('{"version": 1, "sites": []}')
    code, _, err = _check(model_file, "--baseline", "b.json")
    assert code == 2 and "no complete scan header (missing model, data" in err
    assert "__init__" not in err and len(err.strip().splitlines()) == 1


def test_github_gives_one_annotation_per_site_worst_first_and_fills_the_step_summary(
    report: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 violations at 20 sites (two metrics each): 10 annotations, one per site, the worst
    (largest dead %) first, a count line; the Markdown summary goes to $GITHUB_STEP_SUMMARY."""
    rows = [
        _row(f"blocks.{i}.act", "relu", dead_pct=50.0 + i, min_abs_deriv=0.0) for i in range(20)
    ]
    result = evaluate(
        dataclasses.replace(report, rows=rows), {"max_dead_pct": 10, "min_deriv": 1e-3}
    )
    assert len(result.violations) == 40
    lines = render_check(result, "github").splitlines()
    errors = [line for line in lines if line.startswith("::error")]
    assert len(errors) == 10
    sites = [line.split("::site ", 1)[1].split(":", 1)[0] for line in errors]
    assert sites == [f"blocks.{i}.act" for i in range(19, 9, -1)]
    assert (
        "neurodiag: 40 violations at 20 sites, 10 annotated worst first; 10 more not annotated"
        in lines
    )
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert write_step_summary(result) == summary
    assert "blocks.0.act" in summary.read_text()
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert write_step_summary(result) is None


@pytest.mark.parametrize(
    ("model", "classname"),
    [
        ("sample_models/plain_mlp.py:build_model", "sample_models.plain_mlp.build_model"),
        ("./models/net.py", "models.net"),
        ("C:\\work\\net.py:make", "C_.work.net.make"),
    ],
)
def test_junit_classnames_are_dotted(model: str, classname: str) -> None:
    assert junit_classname(model) == classname


@pytest.mark.parametrize(
    ("model", "location"),
    [
        ("C:\\work\\net.py:make", "file=C%3A\\work\\net.py,title=neurodiag"),
        ("models/net.py", "file=models/net.py,title=neurodiag"),
        ("mypkg.models:build", "title=neurodiag"),  # no file to point at
    ],
)
def test_github_points_at_the_model_file_only_when_the_spec_names_one(
    result: CheckResult, model: str, location: str
) -> None:
    header = dataclasses.replace(result.report.header, model=model)
    moved = dataclasses.replace(result, report=dataclasses.replace(result.report, header=header))
    assert render_check(moved, "github").startswith(f"::error {location}::site ")
