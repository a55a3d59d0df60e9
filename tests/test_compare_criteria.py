"""compare's dead criteria side by side, each against a brute-force computation from hand-written
forward hooks over the same batches (no neurodiag statistic code in the reference)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from neurodiag.activations.bernstein import Bernstein
from neurodiag.compare import SUMMARY_COLUMNS, Comparison, compare, training
from neurodiag.compare.render import compare_markdown, compare_table, markdown_rows
from neurodiag.compare.summary import CRITERIA, zero_by_construction
from neurodiag.config import DEFAULT_EPS, DEFAULT_TAU

BATCHES = 4
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, Bernstein)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_mlp() -> nn.Sequential:
    """Two ReLU sites; neuron 0 of the first has bias -100: its output is 0 everywhere."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)
    )
    with torch.no_grad():
        model[0].bias[0] = -100.0
    return model


def batches() -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)
    ]


@dataclass
class Call:
    """One forward call of an activation module: a hook-free copy of it, its input and output."""

    module: nn.Module
    z: Tensor
    a: Tensor

    def derivative(self) -> Tensor:
        """σ'(z) by autograd through the copy (elementwise activations: the diagonal)."""
        z = self.z.clone().double().requires_grad_(True)
        module = self.module.double()
        (grad,) = torch.autograd.grad(module(z).sum(), z)
        return grad


def _sites(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ACTIVATIONS)]


def _record(model: nn.Module, into: dict[str, list[Call]]) -> list[Any]:
    def hook(name: str) -> Any:
        def run(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            clean = copy.deepcopy(module)
            clean._forward_hooks.clear()
            clean._forward_pre_hooks.clear()
            into.setdefault(name, []).append(
                Call(clean, inputs[0].detach().clone(), output.detach().clone())
            )

        return run

    return [m.register_forward_hook(hook(name)) for name, m in _sites(model)]


@pytest.fixture(scope="module")
def run() -> tuple[Comparison, dict[str, dict[str, list[Call]]]]:
    """compare of the planted ReLU net with a leaky ReLU and a Bernstein variant, training for
    two epochs with every training step's activation calls recorded by our own hooks."""
    steps: dict[str, dict[str, list[Call]]] = {}
    original = training.Runner.step
    names = iter(["baseline"] * 2 * BATCHES + ["lrelu0.01"] * 2 * BATCHES + ["bern9"] * 2 * BATCHES)

    def step(self: training.Runner, batch: Any, optimizer: torch.optim.Optimizer) -> float:
        calls = steps.setdefault(next(names), {})
        handles = _record(self.model, calls)
        try:
            return original(self, batch, optimizer)
        finally:
            for handle in handles:
                handle.remove()

    patch = pytest.MonkeyPatch()
    patch.setattr(training.Runner, "step", step)
    try:
        result = compare(planted_mlp(), batches(), ["lrelu0.01", "bern9"], epochs=2, lr=1e-2)
    finally:
        patch.undo()
    return result, steps


def _scan_outputs(model: nn.Module) -> dict[str, Tensor]:
    """Every scanned position's activation per site, (positions, neurons), in float64."""
    calls: dict[str, list[Call]] = {}
    handles = _record(model, calls)
    try:
        with torch.no_grad():
            model.eval()
            for x, _ in batches():
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat([c.a.double() for c in cs]) for name, cs in calls.items()}


def _mean_max(values: list[float]) -> tuple[float, float]:
    return sum(values) / len(values), max(values)


@pytest.mark.parametrize("variant", ["baseline", "lrelu0.01", "bern9"])
def test_each_criterion_equals_a_brute_force_count(
    run: tuple[Comparison, dict[str, dict[str, list[Call]]]], variant: str
) -> None:
    result, steps = run
    summary = result.variant(variant).summary
    # per-batch window: each of the last epoch's training batches, the % of neurons with
    # |σ'| ≤ ε at every position of that batch, averaged over the batches
    per_batch = []
    for calls in steps[variant].values():
        assert len(calls) == 2 * BATCHES  # two epochs of training steps
        fractions = [
            float((c.derivative().abs() <= DEFAULT_EPS).all(dim=0).double().mean())
            for c in calls[BATCHES:]
        ]
        per_batch.append(100.0 * sum(fractions) / len(fractions))
    window = result.variant(variant).train_window
    assert window is not None
    assert [r["dead_pct"] for r in window.rows] == pytest.approx(per_batch, rel=1e-6)
    assert window.header.dead_window == "batch"
    mean, high = _mean_max(per_batch)
    assert summary["train_mean_dead_pct"] == pytest.approx(mean, rel=1e-6, abs=1e-9)
    assert summary["train_max_dead_pct"] == pytest.approx(high, rel=1e-6, abs=1e-9)
    # zero-output and τ-dormant over the post-epoch scan of the final model
    outputs = _scan_outputs(result.variant(variant).model)
    zero, dormant = [], []
    for a in outputs.values():
        zero.append(100.0 * float((a == 0).all(dim=0).double().mean()))
        mean_abs = a.abs().mean(dim=0)
        scores = mean_abs / mean_abs.mean()
        dormant.append(100.0 * float((scores <= DEFAULT_TAU).double().mean()))
    assert [r["zero_output_pct"] for r in result.variant(variant).sites] == pytest.approx(zero)
    for key, values in (("zero_output", zero), ("dormant", dormant)):
        mean, high = _mean_max(values)
        assert summary[f"mean_{key}_pct"] == pytest.approx(mean, rel=1e-6, abs=1e-9), key
        assert summary[f"max_{key}_pct"] == pytest.approx(high, rel=1e-6, abs=1e-9), key
    # the scan's own window stays the user's (whole scan)
    assert result.variant(variant).report.header.dead_window == "scan"


def test_the_planted_neuron_and_what_is_zero_by_construction(
    run: tuple[Comparison, dict[str, dict[str, list[Call]]]],
) -> None:
    result, _ = run
    frame = result.summary_frame().set_index("variant")
    # the ReLU unit with bias -100 never fires: dead, zero-output, and dead in every batch
    first = result.variant("baseline").sites[0]
    assert first["zero_output_pct"] >= 100 / 12 and first["dead_pct"] >= 100 / 12
    assert frame.loc["baseline", "train_max_dead_pct"] >= 100 / 12
    criteria = result.criteria()
    assert list(criteria) == [c.key for c in CRITERIA]
    for key in ("dead", "train_dead", "zero_output"):
        zero = criteria[key]["zero_by_construction"]
        assert set(zero) == {"lrelu0.01", "bern9"}, key
        assert "slope ≥ 0.01 > ε = 0.001" in zero["lrelu0.01"]
        assert "δ̄ ≥ 0.009 > ε = 0.001" in zero["bern9"]
        for name in zero:  # and the measurement agrees
            for column in criteria[key]["summary_columns"]:
                assert frame.loc[name, column] == 0.0, (name, column)
    for key in ("dormant", "grad_dormant"):
        assert criteria[key]["zero_by_construction"] == {}
        assert criteria[key]["can_be_nonzero_for_every_activation"] is True
    # a site whose slope is not above ε, or a Bernstein bound that failed, claims nothing
    lrelu = result.variant("lrelu0.01")
    assert zero_by_construction(lrelu.sites, lrelu.model, eps=0.02) is None
    broken = [dict(r, bound_ok=False) for r in result.variant("bern9").sites]
    assert zero_by_construction(broken, None, DEFAULT_EPS) is None
    assert zero_by_construction(result.variant("baseline").sites, None, DEFAULT_EPS) is None


def test_outputs_name_each_criterion_and_its_window(
    run: tuple[Comparison, dict[str, dict[str, list[Call]]]],
) -> None:
    result, _ = run
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(doc["variants"][0]["summary"]) == set(SUMMARY_COLUMNS)
    assert doc["criteria"]["train_dead"]["site_rows"] == "train_window_sites"
    assert "Fig. 3" in doc["criteria"]["train_dead"]["window"]
    text = compare_table(result)
    assert "train max dead %" in text and "(per batch)" in text and "max zero-out %" in text
    assert "mean zero-out %" not in text  # the terminal shows the max over sites only
    assert "criteria  dead: |σ'(z)| ≤ ε = 0.001" in text
    assert "0 by construction (dead, train dead, zero-output): lrelu0.01" in text
    markdown = compare_markdown(result)
    assert "| mean_zero_output_pct |" in markdown and "paper's < 5 %" in markdown
    # a comparison saved before the criteria columns existed renders as it did then
    frame = (
        result.summary_frame()
        .drop(
            columns=[
                "mean_zero_output_pct",
                "max_zero_output_pct",
                "mean_dormant_pct",
                "max_dormant_pct",
            ]
        )
        .reindex(columns=list(SUMMARY_COLUMNS))
    )
    assert "zero_output" not in markdown_rows(frame) and "dormant" not in markdown_rows(frame)


def test_criteria_panel_draws_every_criterion_per_variant(
    run: tuple[Comparison, dict[str, dict[str, list[Call]]]],
) -> None:
    from neurodiag.plots import CRITERIA_BARS, criteria_panel

    result, _ = run
    panel = criteria_panel(json.loads(json.dumps(result.to_dict(), allow_nan=False)))
    assert panel.groups == ("baseline", "lrelu0.01", "bern9")
    assert panel.marked == ("lrelu0.01", "bern9")
    frame = result.summary_frame()
    for (key, _), (_, values) in zip(CRITERIA_BARS, panel.bars, strict=True):
        assert list(values) == pytest.approx(list(frame[key]), nan_ok=True)
    assert not any(math.isnan(v) for _, values in panel.bars for v in values)
