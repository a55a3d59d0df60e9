"""The CLI through typer's CliRunner: outputs parse, bad input is one line and exit 2."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
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


# --- the CLI declared once: choices from the registries, the library does the work ----------


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the real console entry point; (exit code, stderr)."""
    from neurodiag.cli import main

    with pytest.raises(SystemExit) as done:
        main(args)
    return int(done.value.code or 0), capsys.readouterr().err


def _lines(report: object, *, width: int | None = None, color: bool = False) -> str:
    """A scan-only output format for the tests below: one ``site: dead_pct`` line per site."""
    rows = getattr(report, "rows", [])
    return "".join(f"{row['site']}: {row['dead_pct']}\n" for row in rows)


@pytest.fixture()
def scan_only_format() -> Iterator[str]:
    """Registers ``lines`` with the scan renderers only (not check's, compare's, inspect's)."""
    from neurodiag.report.render import RENDERERS, register_renderer

    register_renderer("lines", _lines)
    yield "lines"
    RENDERERS.unregister("lines")


def test_scan_accepts_a_format_registered_after_import(
    model_file: Path, scan_only_format: str
) -> None:
    code, out, err = _invoke("scan", str(model_file), "-f", scan_only_format, "--max-batches", "1")
    assert code == 0, err
    assert out.splitlines() == ["1: 50.0", "3: 0.0"]


def test_compare_refuses_a_scan_only_format_before_any_work(
    tmp_path: Path, scan_only_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not accepted and then a traceback after training: a usage error, before the model
    file is even run (it would leave a marker)."""
    marker = tmp_path / "ran"
    model = tmp_path / "marked.py"
    model.write_text(f"open({str(marker)!r}, 'w').close()\n" + SMALL_MLP)
    args = ["compare", str(model), "-a", "gelu", "--epochs", "1", "-f", scan_only_format]
    code, err = _main(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "'lines' is not one of" in lines[0]
    assert "Traceback" not in err and not marker.exists()


@pytest.mark.parametrize("command", ["scan", "check", "compare", "inspect"])
def test_every_format_option_offers_exactly_its_registry(command: str) -> None:
    """``-f`` takes each name its renderer registry has and refuses the others' names (and a
    name nobody registered)."""
    import typer

    from neurodiag.check.render import CHECK_RENDERERS
    from neurodiag.compare.render import COMPARE_RENDERERS
    from neurodiag.inspect.report import INSPECT_RENDERERS
    from neurodiag.report.render import RENDERERS

    registries = {"scan": RENDERERS, "check": CHECK_RENDERERS, "compare": COMPARE_RENDERERS,
                  "inspect": INSPECT_RENDERERS}  # fmt: skip
    own = set(registries[command])
    others = ({"xml"} | set().union(*map(set, registries.values()))) - own
    cli = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    extra = ["-a", "gelu"] if command == "compare" else []
    for fmt in sorted(own):
        with cli.make_context(command, ["m.py", *extra, "-f", fmt]) as ctx:
            assert ctx.params["fmt"] == fmt
    for fmt in sorted(others):
        with pytest.raises(Exception, match="is not one of"):
            cli.make_context(command, ["m.py", *extra, "-f", fmt])


FLIPPED_IN_TRAIN = """
import torch
from torch import nn

class TrainShift(nn.Module):
    # train mode pushes every pre-activation far below 0: all units dead
    def forward(self, x):
        return x - 1000.0 if self.training else x

def build_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), TrainShift(), nn.ReLU(), nn.Linear(8, 8), nn.GELU(),
                          nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias[:4] = -100.0
    return model
"""


def _treat_rows(out: str) -> dict[str, list[str]]:
    """Site -> its cells in treat's table (site, neurons, dead % before, ...)."""
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return {cells[0]: cells for cells in rows if cells[0].isdigit()}


@pytest.mark.parametrize(
    ("given", "flag", "site", "column", "default", "changed"),
    [
        ([], ["--mode", "train"], "2", 2, "50.0", "100.0"),  # dead % before: eval vs train
        ([], ["--include", "2"], "4", 0, "4", None),  # the GELU site is not scanned
        (["--input-shape", "5,4"], ["--feature-dim", "2=1"], "2", 1, "8", "5"),  # neurons
    ],
)
def test_treat_honours_mode_include_and_feature_dim(
    tmp_path: Path,
    given: list[str],
    flag: list[str],
    site: str,
    column: int,
    default: str,
    changed: str | None,
) -> None:
    """treat scans (before and after) with the metrics options ``scan`` takes."""
    model = tmp_path / "flip.py"
    model.write_text(FLIPPED_IN_TRAIN)
    args = ["treat", str(model), "--max-batches", "1", "-o", str(tmp_path / "new.pt"), *given]
    code, out, err = _invoke(*args)
    assert code == 0, err
    assert _treat_rows(out)[site][column] == default
    code, out, err = _invoke(*args, *flag)
    assert code == 0, err
    rows = _treat_rows(out)
    assert (rows[site][column] if site in rows else None) == changed


def test_the_check_policy_is_the_library_s() -> None:
    """What the CLI's exit code says is decided by ``neurodiag.check.policy``."""
    import neurodiag
    from neurodiag.check import EXIT_UNHEALTHY, exit_code, prepare_gate
    from neurodiag.errors import NeurodiagError

    model = nn_model()
    report = neurodiag.scan(model, [torch_batch()])
    gate = prepare_gate({"max_dead_pct": 30.0}, config=None)
    assert exit_code(gate.judge(report)) == EXIT_UNHEALTHY  # half of site 1 is dead
    assert exit_code(prepare_gate({"max_dead_pct": 60.0}).judge(report)) == 0
    with pytest.raises(NeurodiagError, match="--allow-empty"):
        prepare_gate({}).admit(neurodiag.scan(model, [torch_batch()], exclude=("*",)))
    with pytest.raises(NeurodiagError, match="--baseline"):
        prepare_gate({}, update_baseline=True)


def nn_model() -> object:
    namespace: dict[str, object] = {}
    exec(SMALL_MLP, namespace)
    return namespace["build_model"]()  # type: ignore[operator]


def torch_batch() -> object:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_every_command_keeps_every_flag_default_panel_and_help() -> None:
    """The options as typer builds them, against tests/golden/cli_options.json (made from the
    CLI before its options were declared once, plus treat's --mode/--include/--exclude/
    --feature-dim): a flag that disappears or changes its default, panel or help fails here."""
    import typer

    def plain(value: object) -> object:
        value = getattr(value, "value", value)
        return list(value) if isinstance(value, (list, tuple)) else value

    group = typer.main.get_command(app)
    live = {
        name: [
            {
                "name": p.name,
                "flags": [*p.opts, *p.secondary_opts],
                "default": repr(plain(p.default)),
                "panel": getattr(p, "rich_help_panel", None),
                "required": p.required,
                "help": getattr(p, "help", None),
            }
            for p in sorted(command.params, key=lambda p: str(p.name))
        ]
        for name, command in sorted(group.commands.items())  # type: ignore[attr-defined]
    }
    golden = json.loads((ROOT / "tests" / "golden" / "cli_options.json").read_text())
    assert live == golden
