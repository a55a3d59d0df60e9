"""compare's terminal table: fitted to the width, a best line, data and loss named (issue 26).

Golden files of a fixed, hand-built Comparison (no training, no scan), so a change in layout
always shows here and a change in measurement never does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from rich.cells import cell_len
from torch import nn

from neurodiag.compare import Comparison, VariantResult
from neurodiag.compare.render import compare_json, compare_table
from neurodiag.compare.summary import best_variant
from neurodiag.report import Report
from tests.fixtures.reports import report_row, sample_header

Golden = Callable[[str, str], None]


def _variant(
    name: str, activation: str, loss: float, accuracy: float | None, **site: Any
) -> VariantResult:
    rows = [
        report_row("body.0.act", activation, neurons=100, **({"mag": 2.5e-3} | site)),
        report_row("body.2.act", activation, neurons=100, mag=1.2e-3, min_abs_deriv=0.0),
    ]
    report = Report(header=sample_header(model=name), rows=rows)
    history = [{"epoch": e, "loss": loss + 0.1 * (2 - e), "accuracy": accuracy} for e in range(3)]
    return VariantResult(
        name, activation, history, report, nn.Identity(), train_window=report, wall_time_s=1.25
    )


def comparison(**overrides: Any) -> Comparison:
    variants = [
        _variant("baseline", "relu", 0.4821, 0.912, dead_pct=31.0, dormant_pct=40.0),
        _variant("gelu", "gelu", 0.3312, 0.947),
        _variant(
            "bern9:bn:delta=0.01:range=-5,5", "bern9", 0.3107, 0.947,
            delta_bar=9e-3, bound_ok=True, min_abs_deriv=0.011,
        ),
        _variant("selu", "selu", math.nan, None),
    ]  # fmt: skip
    settings: dict[str, Any] = {
        "optimizer": "adam",
        "lr": 0.001,
        "eps": 1e-3,
        "tau": 0.1,
        "dead_window": "scan",
        "data": "sklearn:digits (1797 samples, 64 standardised features, 10 classes, batch 64)",
        "loss": "cross_entropy",
    }
    return Comparison(variants, 0, 2, settings | overrides, wall_time_s=5.0)


@pytest.mark.parametrize("width", [80, 160])
def test_compare_table_golden(width: int, golden: Golden) -> None:
    golden(compare_table(comparison(), width=width), "txt")


def test_compare_table_natural_width_golden(golden: Golden) -> None:
    """A file (or a terminal wide enough) gets the full columns."""
    golden(compare_table(comparison()), "txt")


@pytest.mark.parametrize("width", [70, 80, 100, 160])
def test_every_line_fits_the_width(width: int) -> None:
    text = compare_table(comparison(), width=width)
    assert max(cell_len(line) for line in text.splitlines()) <= width
    assert "τ-dorm" in text and "first-site MAG" not in text  # the compact columns


def test_full_columns_when_they_fit() -> None:
    text = compare_table(comparison())
    assert "first-site MAG" in text and "mean dead %" in text and "columns " not in text


def test_best_line_names_the_winner_and_flags() -> None:
    text = compare_table(comparison(), width=80)
    # gelu and the Bernstein variant tie on accuracy: the lower loss wins
    assert "best      bern9:bn:delta=0.01:range=-5,5: highest held-out accuracy (94.7%, tie" in text
    assert "flagged   selu: loss not finite" in text


def test_best_variant_rules() -> None:
    rows: list[dict[str, Any]] = [
        {"variant": "a", "loss": 0.5, "accuracy": math.nan, "bound_ok": None},
        {"variant": "b", "loss": 0.2, "accuracy": math.nan, "bound_ok": False},
        {"variant": "c", "loss": 0.3, "accuracy": math.nan, "bound_ok": None},
    ]
    best = best_variant(rows, trained=True)
    assert best.variant == "c" and "lowest training loss" in best.why
    assert best.flagged == {"b": "bound broken (min |σ'| < δ̄)"}
    assert best_variant(rows, trained=False).variant is None


def test_data_and_loss_are_said_in_the_table_and_json() -> None:
    synthetic = "synthetic (B, 8) standard normal (from Linear '0'; 4 batches of 64, seed 0)"
    surrogate = "surrogate: random projection (no targets)"
    result = comparison(data=synthetic, loss=surrogate)
    text = compare_table(result, width=100)
    assert f"data     {synthetic}" in text and f"loss     {surrogate}" in text
    settings = json.loads(compare_json(result))["settings"]
    assert settings["data"] == synthetic and settings["loss"] == surrogate
