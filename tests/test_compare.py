"""compare: identical starts, identical data, deterministic numbers, the paper's effect."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import neurodiag
from neurodiag.activations.bernstein import Bernstein
from neurodiag.compare import SUMMARY_COLUMNS, CompareProgress, Comparison, compare
from neurodiag.compare.training import EpochBatches, epoch_lengths
from neurodiag.errors import NeurodiagError
from neurodiag.report.model import COLUMNS


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids spin-waits when the 2 cores are busy (10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def deep_relu_mlp(depth: int = 10, width: int = 16, bias: float = -0.3) -> nn.Sequential:
    """A plain deep ReLU MLP whose negative bias init kills neurons layer after layer."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    features = 64
    for _ in range(depth):
        linear = nn.Linear(features, width)
        with torch.no_grad():
            linear.bias.fill_(bias)
        layers += [linear, nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def digits() -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
    """400 training and 200 held-out digits, standardised, in batches of 50."""
    datasets = pytest.importorskip("sklearn.datasets")
    features, targets = datasets.load_digits(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    y = torch.tensor(targets, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, held = order[:400], order[400:600]
    batches = [(x[train[i : i + 50]], y[train[i : i + 50]]) for i in range(0, 400, 50)]
    return batches, [(x[held], y[held])]


def small_data(n_batches: int = 3) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g))
        for _ in range(n_batches)
    ]


def _without_times(result: dict[str, Any]) -> dict[str, Any]:
    """Timings differ between identical runs: drop them (top level and per variant)."""
    out = {k: v for k, v in result.items() if k != "wall_time_s"}
    out["variants"] = [
        {**v, "summary": {k: s for k, s in v["summary"].items() if k != "time_s"}}
        for v in result["variants"]
    ]
    return out


def test_same_seed_gives_identical_numbers_and_leaves_the_caller_alone() -> None:
    model = deep_relu_mlp(depth=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    runs = [
        compare(model, small_data(), ["bern9", "nrelu0.1"], epochs=2, lr=1e-2, seed=3)
        for _ in range(2)
    ]
    first, second = (_without_times(r.to_dict()) for r in runs)
    assert first == second
    assert torch.equal(rng, torch.get_rng_state())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    other = compare(model, small_data(), ["bern9", "nrelu0.1"], epochs=2, lr=1e-2, seed=4)
    assert _without_times(other.to_dict()) != first  # the seed matters (N-ReLU noise)


def test_variants_start_from_identical_weights() -> None:
    model = deep_relu_mlp(depth=3)
    result = compare(model, small_data(1), ["bern9", "gelu", "lrelu0.05"])
    expected = {k: v for k, v in model.state_dict().items()}
    for variant in result.variants:
        state = variant.model.state_dict()
        shared = [k for k in state if k in expected]
        assert len(shared) == len(expected), variant.name  # every Linear weight is there
        for key in shared:
            assert torch.equal(state[key], expected[key]), (variant.name, key)
    assert [h["epoch"] for h in result.variants[0].history] == [0]


def test_variants_see_the_same_batches_in_the_same_order(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[float]] = {}
    from neurodiag.compare import training

    original = training.Runner.step

    def spy(self: training.Runner, batch: Any, optimizer: torch.optim.Optimizer) -> float:
        seen.setdefault(id(self.model), []).append(float(batch[0].sum()))  # type: ignore[arg-type]
        return original(self, batch, optimizer)

    monkeypatch.setattr(training.Runner, "step", spy)
    compare(deep_relu_mlp(depth=2), small_data(4), ["bern9", "gelu"], epochs=2, batch_size=10)
    orders = list(seen.values())
    assert len(orders) == 3 and len(orders[0]) == 2 * 7
    assert orders[0] == orders[1] == orders[2]
    assert orders[0][:7] != orders[0][7:]  # reshuffled between epochs


def test_bernstein_keeps_a_deep_relu_mlp_alive_on_digits(
    digits: tuple[list[Any], list[Any]],
) -> None:
    train, held = digits
    result = compare(deep_relu_mlp(), train, ["bern9"], epochs=2, lr=1e-2, eval_data=held, seed=0)
    summary = result.summary_frame().set_index("variant")
    assert summary.loc["baseline", "mean_dead_pct"] >= 30.0  # the bias init killed neurons
    assert summary.loc["bern9", "mean_dead_pct"] < summary.loc["baseline", "mean_dead_pct"]
    assert summary.loc["bern9", "bound_ok"] is True
    assert summary.loc["baseline", "bound_ok"] is None
    assert math.isnan(summary.loc["baseline", "delta_bar"])
    bern = result.variant("bern9")
    for row in bern.sites:
        assert row["activation"] == "bernstein"
        assert row["min_abs_deriv"] >= row["delta_bar"] * (1 - 1e-6)
    assert [h["epoch"] for h in bern.history] == [0, 1, 2]
    assert all(h["bound_ok"] is True for h in bern.history)
    assert all(0.0 <= h["accuracy"] <= 1.0 for h in bern.history)


def test_to_dict_has_the_documented_keys_and_is_json() -> None:
    result = compare(deep_relu_mlp(depth=2), small_data(2), ["bern9"], epochs=1)
    out = result.to_dict()
    assert {"variants", "seed", "epochs"} <= set(out)
    json.dumps(out, allow_nan=False)  # NaN became None
    for variant in out["variants"]:
        assert {"name", "activation", "history", "sites", "summary"} <= set(variant)
        assert set(variant["summary"]) == set(SUMMARY_COLUMNS)
        for entry in variant["history"]:
            assert {
                "epoch",
                "loss",
                "accuracy",
                "mean_dead_pct",
                "max_dead_pct",
                "first_site_mag",
                "min_abs_deriv",
                "bound_ok",
                "train_first_site_mag",  # the paper's Fig. 4, from the training window
            } <= set(entry)
        assert set(variant["sites"][0]) == set(COLUMNS)
    assert [v["name"] for v in out["variants"]] == ["baseline", "bern9"]
    assert out["variants"][0]["activation"] == "relu"
    assert out["variants"][0]["history"][0]["accuracy"] is None  # no eval_data


def test_frames_have_the_documented_columns() -> None:
    result = compare(deep_relu_mlp(depth=2), small_data(1), ["gelu"])
    assert list(result.summary_frame().columns) == list(SUMMARY_COLUMNS)
    per_site = result.per_site_frame()
    assert list(per_site.columns) == ["variant", *COLUMNS]
    assert list(per_site["variant"]) == ["baseline"] * 2 + ["gelu"] * 2


def test_steps_cap_training_and_progress_counts_up_to_total() -> None:
    events: list[CompareProgress] = []
    result = compare(
        deep_relu_mlp(depth=2), small_data(2), ["bern9"], steps=3, on_step=events.append
    )
    history = result.variant("bern9").history
    assert [(h["epoch"], h["step"]) for h in history] == [(0, 0), (1, 2), (2, 3)]
    assert [e.done for e in events] == list(range(1, len(events) + 1))
    assert events[-1].done == events[-1].total == 2 * (3 + 3)
    assert {e.phase for e in events} == {"train", "scan"}


def test_epoch_lengths() -> None:
    assert epoch_lengths(2, None, 4) == [4, 4]
    assert epoch_lengths(0, None, 4) == []
    assert epoch_lengths(0, 10, 4) == [4, 4, 2]
    assert epoch_lengths(2, 5, 4) == [4, 1]
    assert epoch_lengths(3, 100, 4) == [4, 4, 4]


def test_rebatching_keeps_epoch_zero_in_order_and_reshuffles_reproducibly() -> None:
    data = [torch.arange(0, 5), torch.arange(5, 10)]
    batches = EpochBatches(data, batch_size=4, seed=0)
    assert len(batches) == 3
    assert torch.equal(torch.cat(batches.epoch(0)), torch.arange(10))
    one = torch.cat(batches.epoch(1))
    assert sorted(one.tolist()) == list(range(10)) and not torch.equal(one, torch.arange(10))
    assert torch.equal(one, torch.cat(EpochBatches(data, 4, 0).epoch(1)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"specs": ["relu7"]}, "unknown activation 'relu7'"),
        ({"specs": ["bern9", "bern9:delta=0.01"]}, "repeated: bern9"),
        ({"specs": "bern9"}, "list of activation specs"),
        ({"specs": ["gelu"], "optimizer": "lbfgs"}, "unknown optimizer"),
        ({"specs": ["gelu"], "epochs": -1}, "epochs must be"),
        ({"specs": ["gelu"], "lr": 0.0}, "lr must be"),
        ({"specs": ["gelu"], "batch_size": 0}, "batch_size must be"),
        ({"specs": ["gelu"], "momentum": 0.9}, "momentum is an SGD setting"),
        ({"specs": ["gelu"], "optimizer": "sgd", "momentum": 1.0}, "momentum must be"),
        ({"specs": ["gelu"], "weight_decay": -1.0}, "weight_decay must be"),
        ({"specs": ["gelu"], "schedule": "linear"}, "unknown schedule 'linear'"),
        ({"specs": ["gelu"], "init": "orthogonal"}, "unknown init 'orthogonal'"),
    ],
)
def test_bad_arguments_fail_before_training(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(NeurodiagError, match=message):
        compare(deep_relu_mlp(depth=1), small_data(1), **kwargs)


def test_plots_write_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from neurodiag.plots import plot_comparison, plot_scan

    result = compare(deep_relu_mlp(depth=3), small_data(1), ["bern9"], epochs=1)
    figure = plot_comparison(result, tmp_path / "compare.png")
    single = plot_scan(result.variants[0].report, tmp_path / "scan.png")
    for path in (figure, single):
        data = path.read_bytes()
        assert len(data) > 10_000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_panels_are_the_papers_figures_with_every_variant() -> None:
    """What each panel draws, read back from the comparison (no matplotlib needed)."""
    from neurodiag.plots import FLOORS, comparison_panels

    result = compare(
        deep_relu_mlp(depth=6), small_data(3), ["gelu", "bern9"], epochs=2, lr=1e-2,
        batch_size=16, eval_data=small_data(1),
    )  # fmt: skip
    window = result.variants[0].train_window
    assert window is not None
    for row in window.rows:  # tell the training window apart from the post-epoch scan
        row["dead_pct"] = 42.0
    panels = comparison_panels(result)
    assert [p.title.split(" ", 2)[1] for p in panels] == ["1", "1", "1", "2", "3", "4", "5", "5"]
    assert [p.title for p in panels[:3]] == [
        "Fig. 1 min |σ'| by epoch, first site (#0)",
        "Fig. 1 min |σ'| by epoch, middle site (#2)",
        "Fig. 1 min |σ'| by epoch, last site (#5)",
    ]
    names = ["baseline", "gelu", "bern9"]
    for panel in panels:
        assert [s.label for s in panel.series if not s.dashed] == names, panel.title
    bern = result.variant("bern9")
    first = panels[0].series[2]
    assert first.x == [0.0, 1.0, 2.0]
    assert first.y == [h["site_min_abs_deriv"][0] for h in bern.history]
    (bar,) = [s for s in panels[0].series if s.dashed]
    assert bar.label == "bern9 δ̄" and bar.y == [bern.sites[0]["delta_bar"]] * 2
    # Fig. 3: the last epoch's training window, zeros on the fixed, stated floor
    fig3 = panels[4]
    assert "training batches" in fig3.title and fig3.floor == FLOORS["dead_pct"] == 0.01
    assert fig3.series[0].y == [42.0] * 6
    assert set(fig3.at_floor) == {"gelu", "bern9"}
    assert fig3.lifted([0.0, 50.0]) == [0.01, 50.0]
    # Fig. 2 keeps ReLU's zeros and SELU-like tiny values on the 1e-6 floor, not at 1e-46
    assert panels[3].floor == 1e-6 and "baseline" in panels[3].at_floor
    accuracy = [h["accuracy"] for h in result.variants[0].history]
    assert panels[7].series[0].y == accuracy
    # the JSON document (what compare --format json saves) draws the same figures
    from neurodiag.compare.render import compare_json

    again = comparison_panels(json.loads(compare_json(result)))
    assert [(p.title, p.floor, p.at_floor) for p in again] == [
        (p.title, p.floor, p.at_floor) for p in panels
    ]
    for mine, theirs in zip(panels, again, strict=True):
        for a, b in zip(mine.series, theirs.series, strict=True):
            assert (a.label, a.x) == (b.label, b.x)
            assert a.y == pytest.approx(b.y, nan_ok=True)


def test_plots_without_matplotlib_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from neurodiag.plots import plot_scan

    result = compare(deep_relu_mlp(depth=1), small_data(1), [])
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(NeurodiagError, match=r"pip install 'neurodiag\[plot\]'"):
        plot_scan(result.variants[0].report, "unused.png")


def test_comparison_lookup_names_the_variants() -> None:
    result = Comparison([], seed=0, epochs=0)
    with pytest.raises(KeyError, match="no variant named 'x'"):
        result.variant("x")


def test_bernstein_parameters_are_trained() -> None:
    result = compare(deep_relu_mlp(depth=2), small_data(2), ["bern9"], epochs=1, lr=1e-2)
    fresh = compare(deep_relu_mlp(depth=2), small_data(2), ["bern9"])
    trained = [m for m in result.variant("bern9").model.modules() if isinstance(m, Bernstein)]
    initial = [m for m in fresh.variant("bern9").model.modules() if isinstance(m, Bernstein)]
    assert len(trained) == 2
    assert any(not torch.equal(a.theta, b.theta) for a, b in zip(trained, initial, strict=True))


def test_compiled_kernels_reach_every_bernstein_of_the_variants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compiled_kernels=True: each variant's Bernstein modules run the shared compiled kernels
    (here made to fail, so the eager fallback keeps the test fast), the caller's model and the
    other variants' activations untouched, and the setting recorded."""
    from neurodiag.activations import bernstein

    stub = bernstein._Compiled()
    stub.failed = "compiling switched off by the test"
    monkeypatch.setattr(bernstein, "_COMPILED", stub)
    calls: list[str] = []
    run = stub.run
    monkeypatch.setattr(stub, "run", lambda kernel, *a: calls.append(kernel) or run(kernel, *a))
    model = deep_relu_mlp(depth=2)
    result = compare(model, small_data(2), ["bern9", "gelu"], epochs=1, compiled_kernels=True)
    modules = [m for m in result.variant("bern9").model.modules() if isinstance(m, Bernstein)]
    assert len(modules) == 2 and all(m.compiled_kernel for m in modules)
    assert "value" in calls  # the compiled forward; its backward is compiled with it
    assert result.settings["compiled_kernels"] is True
    assert not any(isinstance(m, Bernstein) for m in model.modules())


def he_relu_mlp(depth: int, width: int, seed: int = 0) -> nn.Sequential:
    """A plain deep ReLU MLP with He init and zero biases (sample_models/plain_mlp.py): for
    ReLU exactly critical, so it trains at depth 50 without residuals or normalisation."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    features = 64
    for _ in range(depth):
        linear = nn.Linear(features, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("seed", [0, 1])
def test_bernstein_trains_through_a_50_layer_he_relu_mlp(
    digits: tuple[list[Any], list[Any]], seed: int
) -> None:
    """Regression: swapped in as its monotone ReLU fit, bern9 shrank the squared gradient at
    every layer (2·E[σ'(z)²] ≈ 0.57 instead of 1) and, after a few Adam steps, the 50-layer MLP
    output the same logits for every input: the loss settled at the label entropy H (ln 10
    here, the best constant prediction) and the first site's gradient fell ~1000×. In its
    critical init it learns. Threshold: 16 Adam steps must take the loss 0.25 below H (model
    seeds 0-4: the fit stayed within 0.025 of H, the critical init got 0.39-0.68 below it)."""
    train, _ = digits
    labels = torch.cat([y for _, y in train])
    p = torch.bincount(labels, minlength=10).double() / len(labels)
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    result = compare(
        he_relu_mlp(50, 32, seed), train, ["bern9"], epochs=2, lr=1e-3, seed=0, scan_batches=1
    )
    history = result.variant("bern9").history
    assert history[-1]["loss"] < entropy - 0.25, [h["loss"] for h in history]
    assert history[-1]["first_site_mag"] > 0.1 * history[0]["first_site_mag"]


def test_an_interrupt_keeps_the_variants_that_finished() -> None:
    """Ctrl-C/SIGTERM in the second variant (training or scan): the first one is kept."""
    from neurodiag.compare.engine import CompareInterrupted
    from neurodiag.errors import Terminated

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]

    def stop_in_second(progress: Any) -> None:
        if progress.variant != "baseline":
            raise Terminated()

    with pytest.raises(CompareInterrupted) as info:
        compare(model, data, ["gelu"], steps=2, on_step=stop_in_second)
    assert [v.name for v in info.value.comparison.variants] == ["baseline"]
    assert info.value.planned == 2 and info.value.terminated


@pytest.mark.parametrize("init", ["he", "xavier", "torch"])
def test_init_reinitialises_a_copy_identically_for_every_variant(init: str) -> None:
    model = deep_relu_mlp(depth=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compare(model, small_data(1), ["gelu", "bern9"], init=init, seed=5)
    weights = [v.model.state_dict()["0.weight"] for v in result.variants]
    assert all(torch.equal(w, weights[0]) for w in weights)  # same start for every variant
    assert not torch.equal(weights[0], before["0.weight"])  # re-initialised ...
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # ... a copy
    bias = result.variants[0].model.state_dict()["0.bias"]
    assert (bias == 0).all() if init != "torch" else not (bias == 0).all()
    again = compare(model, small_data(1), ["gelu"], init=init, seed=5)
    assert torch.equal(again.variants[0].model.state_dict()["0.weight"], weights[0])
    std = float(weights[0].std())
    expected = {
        "he": (2 / 64) ** 0.5,
        "xavier": (2 / (64 + 16)) ** 0.5,
        "torch": (1 / 64 / 3) ** 0.5,
    }
    assert std == pytest.approx(expected[init], rel=0.15)


def test_optimizer_settings_and_schedule_reach_the_training_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from neurodiag.compare import training

    seen: list[tuple[float, float, float]] = []
    original = training.Runner.step

    def spy(self: training.Runner, batch: Any, optimizer: torch.optim.Optimizer) -> float:
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["momentum"], group["weight_decay"]))
        return original(self, batch, optimizer)

    monkeypatch.setattr(training.Runner, "step", spy)
    compare(
        deep_relu_mlp(depth=2), small_data(4), [], epochs=2, optimizer="sgd", lr=0.1,
        momentum=0.9, weight_decay=1e-4, schedule="step",
    )  # fmt: skip
    assert [s[1:] for s in seen] == [(0.9, 1e-4)] * 8
    # step: x0.1 at 50 % and 75 % of the 8 steps
    assert [s[0] for s in seen] == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    seen.clear()
    compare(
        deep_relu_mlp(depth=2), small_data(4), [], epochs=1, optimizer="sgd", lr=0.1,
        schedule="cosine",
    )  # fmt: skip
    assert seen[0][0] == pytest.approx(0.1) and seen[-1][0] < 0.1 * 0.2


def test_train_window_measures_the_epochs_training_batches() -> None:
    """lr ~0: the weights do not move, so each epoch's training window equals a per-batch
    (``dead_window="batch"``) scan of that epoch's batches (train mode); epoch 0 has none, and
    the summary shows the last window."""
    model = deep_relu_mlp(depth=4)
    data = small_data(4)
    result = compare(model, data, ["gelu"], epochs=2, lr=1e-30, optimizer="sgd", batch_size=8)
    baseline = result.variants[0]
    assert math.isnan(baseline.history[0]["train_max_dead_pct"])
    window = baseline.train_window
    assert window is not None and window.header.batches == 8 and window.header.samples == 64
    expected = neurodiag.scan(
        model, EpochBatches(data, 8, 0).epoch(2), mode="train", dead_window="batch"
    )
    assert window.header.dead_window == "batch"
    assert result.variants[0].report.header.dead_window == "scan"  # the scans keep theirs
    assert [r["dead_pct"] for r in window.rows] == [r["dead_pct"] for r in expected.rows]
    summary = result.summary_frame().set_index("variant")
    assert summary.loc["baseline", "train_max_dead_pct"] == max(r["dead_pct"] for r in window.rows)
    assert summary.loc["baseline", "time_s"] > 0
    off = compare(model, data, ["gelu"], epochs=1, train_window=False)
    assert off.variants[0].train_window is None
    assert math.isnan(off.summary_frame()["train_max_dead_pct"][0])


def test_html_page_and_notebook_views() -> None:
    """--format html: one self-contained page with the figures inline and a sortable summary;
    in a notebook the summary table, and a one-line repr."""
    from neurodiag.compare.render import render_comparison

    result = compare(deep_relu_mlp(depth=3), small_data(1), ["bern9"], epochs=1)
    page = render_comparison(result, "html")
    assert page.startswith("<!DOCTYPE html>") and 'id="sites"' in page and "<script>" in page
    assert page.count("<tr ") == 2 and ">bern9<" in page and ">baseline<" in page
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page
    fragment = result._repr_html_()
    assert "<script" not in fragment and fragment.count("<tr ") == 2
    assert repr(result).startswith("<Comparison of 2 variants (baseline, bern9): seed 0, 1 epochs")
