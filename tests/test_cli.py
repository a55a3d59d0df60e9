"""The CLI through typer's CliRunner: outputs parse, bad input is one line and exit 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from neurodiag.cli import app
from neurodiag.report.model import COLUMNS

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"

SMALL_MLP = """
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.GELU(),
                          nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias[:4] = -100.0  # half of the first site is dead by construction
    return model
"""


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.py"
    path.write_text(SMALL_MLP)
    return path


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_scan_csv_parses_with_pandas(model_file: Path) -> None:
    code, out, err = _invoke("scan", str(model_file), "--format", "csv", "--max-batches", "2")
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out), dtype={"site": str})
    assert list(frame.columns) == list(COLUMNS)
    assert list(frame["site"]) == ["1", "3"]
    assert frame.loc[0, "dead_pct"] == 50.0


def test_scan_json_has_sites_and_header(model_file: Path) -> None:
    code, out, err = _invoke("scan", str(model_file), "-f", "json", "--max-batches", "1")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["batches"] == 1 and "surrogate" in doc["loss"]
    assert [set(site) for site in doc["sites"]] == [set(COLUMNS)] * 2


def test_scan_table_shows_header_and_sites(model_file: Path) -> None:
    code, out, err = _invoke("scan", str(model_file), "--max-batches", "1")
    assert code == 0, err
    assert "loss" in out and "relu" in out and "gelu" in out


def test_scan_markdown_to_output_file(model_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    code, out, err = _invoke(
        "scan", str(model_file), "-f", "markdown", "-o", str(target), "--max-batches", "1"
    )
    assert code == 0, err
    assert target.read_text().count("| ") > 2 and out == ""


def test_scan_sample_plain_mlp_on_digits() -> None:
    pytest.importorskip("sklearn")
    code, out, err = _invoke(
        "scan",
        str(SAMPLES / "plain_mlp.py"),
        "--data",
        str(SAMPLES / "plain_mlp.yaml"),
        "--max-batches",
        "1",
        "-f",
        "csv",
    )
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert len(frame) == 50 and (frame["activation"] == "relu").all()


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["scan", "missing_model.py"], "not found"),
        (["scan", "{model}", "--data", "missing.yaml"], "missing.yaml"),
        (["scan", "{model}", "--data", "{bad_yaml}"], "line"),
        (["scan", "{raises}"], "ModuleNotFoundError"),
        (["scan", "{model}", "--include", "nothing*"], "matched no site"),
        (["scan", "{model}", "--input-shape", "a,b"], "--input-shape"),
        (["scan", "{model}", "--feature-dim", "oops"], "GLOB=DIM"),
        (["scan", "{model}", "--data", "{wrong_shape}"], "(batch, 4)"),
        (["scan", "{model}", "-o", "/nonexistent-dir/out.csv", "-f", "csv"], "cannot write"),
        (["scan", "{model}", "--device", "cuda"], "CUDA is not available"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], fragment: str, model_file: Path, tmp_path: Path
) -> None:
    import torch

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("source: [unclosed\n")
    raises = tmp_path / "raises.py"
    raises.write_text("import not_a_real_module_xyz\n")
    wrong_shape = tmp_path / "wrong.pt"
    torch.save(torch.randn(4, 7), wrong_shape)
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    filled = [
        a.format(model=model_file, bad_yaml=bad_yaml, raises=raises, wrong_shape=wrong_shape)
        for a in args
    ]
    code, out, err = _invoke(*filled)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in err + out


def test_debug_shows_the_traceback() -> None:
    from neurodiag.errors import NeurodiagError

    result = runner.invoke(app, ["scan", "missing_model.py", "--debug"])
    assert isinstance(result.exception, NeurodiagError)  # raised, so Python prints a traceback


def test_version() -> None:
    code, out, _ = _invoke("--version")
    assert code == 0 and out.startswith("neurodiag ")


def test_scan_plot_writes_a_png(model_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "scan.png"
    code, _, err = _invoke("scan", str(model_file), "--max-batches", "1", "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_scan_forward_only_has_the_forward_columns_and_no_gradient_ones(model_file: Path) -> None:
    args = ("scan", str(model_file), "-f", "csv", "--max-batches", "2")
    code, full, err = _invoke(*args)
    assert code == 0, err
    code, fwd, err = _invoke(*args, "--forward-only")
    assert code == 0, err
    full_frame = pd.read_csv(io.StringIO(full), dtype={"site": str})
    fwd_frame = pd.read_csv(io.StringIO(fwd), dtype={"site": str})
    for column in ("site", "neurons", "dead_pct", "dormant_pct", "min_abs_deriv", "nonfinite"):
        assert fwd_frame[column].tolist() == full_frame[column].tolist(), column
    assert fwd_frame["mag"].isna().all() and fwd_frame["grad_dormant_pct"].isna().all()
    assert full_frame["mag"].notna().all()


def test_inactive_pct_is_in_every_output_format(model_file: Path) -> None:
    """The statistic added as one file shows up everywhere through its declaration."""
    frames = {}
    for fmt in ("csv", "json", "markdown", "table"):
        code, out, err = _invoke("scan", str(model_file), "-f", fmt, "--max-batches", "1")
        assert code == 0, err
        frames[fmt] = out
    csv = pd.read_csv(io.StringIO(frames["csv"]), dtype={"site": str})
    assert csv.loc[0, "inactive_pct"] >= 50.0  # half the ReLU units are dead by construction
    assert all("inactive_pct" in site for site in json.loads(frames["json"])["sites"])
    heading = [line for line in frames["markdown"].splitlines() if line.startswith("| site |")]
    assert heading and "| inactive_pct |" in heading[0]
    assert "inactive" in frames["table"]


def test_check_gates_on_max_inactive_pct(model_file: Path, tmp_path: Path) -> None:
    code, out, err = _invoke("check", str(model_file), "--max-batches", "1",
                             "--max-inactive-pct", "40")  # fmt: skip
    assert code == 1, err
    assert "inactive_pct" in out
    code, _, err = _invoke("check", str(model_file), "--max-batches", "1",
                           "--max-inactive-pct", "100")  # fmt: skip
    assert code == 0, err
    config = tmp_path / "neurodiag.yaml"
    config.write_text("thresholds: {max_inactive_pct: 40}\n")
    code, out, err = _invoke("check", str(model_file), "--max-batches", "1", "-c", str(config))
    assert code == 1 and "inactive_pct" in out, err
    code, _, err = _invoke("check", str(model_file), "--max-inactive-pct", "140")
    assert code == 2 and "--max-inactive-pct" in err


@pytest.mark.parametrize(
    ("command", "panels"),
    [
        ("scan", ["Model and data", "Metrics", "Output", "Examples"]),
        ("check", ["Model and data", "Metrics", "Output", "Thresholds", "Baseline", "Examples"]),
        ("compare", ["Variants", "Training", "Model and data", "Metrics", "Output", "Examples"]),
    ],
)
def test_help_has_panels_examples_and_readable_metavars(command: str, panels: list[str]) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert result.exit_code == 0
    text = result.stdout
    for panel in panels:
        assert panel in text, panel
    assert "<list[str]>" not in text and "<path>" not in text and "the loss ." not in text
    assert max(cell_len(line) for line in text.splitlines()) <= 80  # cells: δ̄ is 2 code points


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_progress_names_what_runs_and_the_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from neurodiag.cli.common import progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with progress_bar(10, True, "comparing") as advance:
        assert advance is not None
        advance(3, 10, "bern9 · epoch 1 · train")
    out = err.getvalue()
    assert "comparing bern9 · epoch 1 · train" in out and "3/10" in out and "eta" in out
