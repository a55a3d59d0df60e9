"""`neurodiag compare` through CliRunner: formats, determinism, errors, plot."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from neurodiag.cli import app

runner = CliRunner()

DEEP_MLP = """
import torch
from torch import nn

def build_model():
    layers = [nn.Linear(4, 12), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Linear(12, 12), nn.ReLU()]
    layers.append(nn.Linear(12, 3))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        model[2].bias[:6] = -20.0  # dead by construction
    return model
"""


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "deep.py"
    model.write_text(DEEP_MLP)
    g = torch.Generator().manual_seed(0)
    data = tmp_path / "data.pt"
    torch.save((torch.randn(96, 4, generator=g), torch.randint(0, 3, (96,), generator=g)), data)
    return model, data


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_compare_json_has_variants_with_history_sites_summary(files: tuple[Path, Path]) -> None:
    model, data = files
    code, out, err = _run(
        "compare", str(model), "-d", str(data), "-a", "bern9", "-a", "lrelu0.01",
        "--epochs", "1", "--batch-size", "32", "-f", "json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    names = [v["name"] for v in doc["variants"]]
    assert names == ["baseline", "bern9", "lrelu0.01"]
    for variant in doc["variants"]:
        assert {"name", "activation", "history", "sites", "summary"} <= set(variant)
        assert [h["epoch"] for h in variant["history"]] == [0, 1]
        assert variant["history"][-1]["accuracy"] is not None  # held-out split
    bern = doc["variants"][1]
    assert bern["summary"]["bound_ok"] is True
    baseline = doc["variants"][0]
    assert baseline["summary"]["max_dead_pct"] >= 50.0
    assert bern["summary"]["max_dead_pct"] == 0.0


def test_compare_is_deterministic_for_a_seed(files: tuple[Path, Path]) -> None:
    model, data = files
    args = ("compare", str(model), "-d", str(data), "-a", "gelu", "--steps", "2", "-f", "csv")
    first, second = _run(*args), _run(*args)
    assert first[0] == 0, first[2]
    frame = pd.read_csv(io.StringIO(first[1]))
    assert list(frame["variant"]) == ["baseline", "gelu"]
    assert (frame["time_s"] > 0).all()  # per-variant wall time: the one column that varies
    again = pd.read_csv(io.StringIO(second[1]))
    pd.testing.assert_frame_equal(frame.drop(columns="time_s"), again.drop(columns="time_s"))


def test_compare_per_site_markdown_and_plot(files: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    model, data = files
    png = tmp_path / "compare.png"
    code, out, err = _run(
        "compare", str(model), "-d", str(data), "-a", "bern9", "--per-site", "-f", "markdown",
        "--plot", str(png),
    )  # fmt: skip
    assert code == 0, err
    assert out.count("| baseline |") == 4 and png.stat().st_size > 1000


def test_compare_unknown_activation_is_one_line_exit_2(files: tuple[Path, Path]) -> None:
    model, data = files
    code, _, err = _run("compare", str(model), "-d", str(data), "-a", "relu7")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "relu7" in lines[0] and "bern" in lines[0]


@pytest.mark.parametrize(("stop", "code"), [("sigint", 130), ("sigterm", 143)])
def test_interrupted_compare_prints_the_finished_variants(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, stop: str, code: int
) -> None:
    from neurodiag.compare import engine
    from neurodiag.errors import Terminated

    real_run = engine._run

    def run(variant: Any, *args: Any) -> Any:
        if variant.name != "baseline":
            raise Terminated() if stop == "sigterm" else KeyboardInterrupt()
        return real_run(variant, *args)

    monkeypatch.setattr(engine, "_run", run)
    model, data = files
    got, out, err = _run("compare", str(model), "-d", str(data), "-a", "gelu", "-f", "json")
    assert got == code, err
    assert [v["name"] for v in json.loads(out)["variants"]] == ["baseline"]
    assert "partial (1 of 2 variants finished)" in err and len(err.strip().splitlines()) == 1


def test_training_knobs_reach_the_comparison(files: tuple[Path, Path]) -> None:
    model, data = files
    code, out, err = _run(
        "compare", str(model), "-d", str(data), "-a", "gelu", "--epochs", "1",
        "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "1e-4",
        "--schedule", "cosine", "--init", "xavier", "-f", "json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    settings = doc["settings"]
    assert (settings["momentum"], settings["weight_decay"]) == (0.9, 1e-4)
    assert (settings["schedule"], settings["init"], settings["train_window"]) == (
        "cosine", "xavier", True
    )  # fmt: skip
    baseline = doc["variants"][0]
    assert baseline["summary"]["train_max_dead_pct"] is not None
    assert baseline["summary"]["time_s"] > 0
    assert [site["site"] for site in baseline["train_window_sites"]] == ["1", "3", "5", "7"]
    code, out, _ = _run(
        "compare", str(model), "-d", str(data), "-a", "gelu", "--epochs", "1",
        "--optimizer", "sgd", "--momentum", "0.9", "--schedule", "step",
    )  # fmt: skip
    assert code == 0 and "momentum 0.9 · schedule step" in out and "train max dead %" in out


def test_momentum_with_adam_is_one_line_exit_2(files: tuple[Path, Path]) -> None:
    model, data = files
    code, out, err = _run("compare", str(model), "-d", str(data), "-a", "gelu", "--epochs", "1",
                          "--momentum", "0.9")  # fmt: skip
    assert code == 2
    assert (out + err).strip().splitlines() == [
        "error: momentum is an SGD setting; adam keeps its own moments"
    ]


def test_training_on_synthetic_inputs_is_refused(files: tuple[Path, Path]) -> None:
    """Issue 26: without --data, training fitted noise with a surrogate loss and said nothing."""
    model, _ = files
    for flag in (["--epochs", "1"], ["--steps", "2"]):
        code, out, err = _run("compare", str(model), "-a", "gelu", *flag, "--no-progress")
        assert code == 2 and out == ""
        assert err.strip().splitlines() == [
            "error: compare trains on your data: give --data (sklearn:NAME, a YAML, tensor "
            "files, loaders.py:fn) or a make_data() in the model file, or drop --epochs/--steps "
            "to scan only (synthetic inputs and a surrogate loss would train on noise)"
        ]


def test_scan_only_compare_says_synthetic_data_and_surrogate_loss(
    files: tuple[Path, Path],
) -> None:
    model, _ = files
    code, out, _ = _run("compare", str(model), "-a", "gelu", "-f", "json", "--no-progress")
    assert code == 0
    settings = json.loads(out)["settings"]
    assert settings["data"].startswith("synthetic (B, 4) standard normal")
    assert settings["loss"].startswith("surrogate")
    result = runner.invoke(app, ["compare", str(model), "-a", "gelu"], env={"COLUMNS": "80"})
    lines = result.stdout.splitlines()
    assert lines[1].startswith("data     synthetic (B, 4) standard normal")
    assert any(line.startswith("loss     surrogate: random projection") for line in lines)
    assert max(len(line) for line in lines) <= 80
    assert "best      none (scan only" in result.stdout
