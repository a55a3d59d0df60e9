"""Update-to-weight ratio per layer and window (issue 28, item 3): ‖W_end − W_start‖ / ‖W_start‖
of each layer's ``weight``, against a hand computation; alerts outside SageMaker Debugger's
bounds; the user's model and optimiser untouched; nothing held when off."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neurodiag.monitor.core import Monitor

LAYERS = ["0", "2"]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g))] * n


def _train(
    model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, monitor: Monitor | None = None
) -> list[dict[str, torch.Tensor]]:
    """Weights before the first step and after each step."""
    weights = [_weights(model)]
    for x, y in _batches(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        weights.append(_weights(model))
    return weights


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight.detach().clone() for name in LAYERS}


def _ratio(start: torch.Tensor, end: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(end - start) / torch.linalg.vector_norm(start))


def test_three_sgd_steps_match_a_hand_computation_weight_only() -> None:
    model = _model()
    with Monitor(model, every=3, update_ratio=True) as monitor:
        weights = _train(model, torch.optim.SGD(model.parameters(), lr=0.5), 3)
    (window,) = monitor.history
    assert list(window.update_ratios) == LAYERS
    for name in LAYERS:
        expected = _ratio(weights[0][name], weights[3][name])
        assert expected > 1e-3  # it moved: the comparison is not 0 == 0
        assert window.update_ratios[name] == pytest.approx(expected, abs=1e-6, rel=1e-6)
    assert not window.alerts and window.frozen_layers == ()


def test_windows_of_two_steps_have_their_own_ratios_and_a_frame() -> None:
    model = _model()
    with Monitor(model, every=2, update_ratio=True) as monitor:
        monitor.epoch = 0
        weights = _train(model, torch.optim.SGD(model.parameters(), lr=0.5), 5)
    bounds = [(w.step_start, w.step_end) for w in monitor.history]
    assert bounds == [(0, 2), (2, 4), (4, 5)]
    for window, (start, end) in zip(monitor.history, bounds, strict=True):
        for name in LAYERS:
            expected = _ratio(weights[start][name], weights[end][name])
            assert window.update_ratios[name] == pytest.approx(expected, abs=1e-6, rel=1e-6)
    frame = monitor.update_frame()
    assert list(frame.columns) == [
        *("window", "step_start", "step_end", "epoch", "layer", "update_ratio", "frozen")
    ]
    assert len(frame) == 3 * len(LAYERS)
    assert frame["layer"].tolist() == LAYERS * 3
    assert frame["epoch"].tolist() == [0] * 6
    assert frame["update_ratio"].tolist() == [
        w.update_ratios[name] for w in monitor.history for name in LAYERS
    ]


def test_manual_steps_and_end_window() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    weights = [_weights(model)]
    with Monitor(model, steps="manual", update_ratio=True) as monitor:
        for x, y in _batches(3):
            monitor.begin_step()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            monitor.end_step()
            weights.append(_weights(model))
        model(torch.randn(2, 4))  # outside a step: not a step, no change
        window = monitor.end_window()
    assert window is not None
    for name in LAYERS:
        expected = _ratio(weights[0][name], weights[3][name])
        assert window.update_ratios[name] == pytest.approx(expected, abs=1e-6, rel=1e-6)


def test_lr_zero_reads_zero_and_alerts_once_per_layer_below_the_bound() -> None:
    model = _model()
    seen: list[Any] = []
    with Monitor(model, every=2, update_ratio=True, on_alert=seen.append) as monitor:
        _train(model, torch.optim.SGD(model.parameters(), lr=0.0), 4)
    assert [w.update_ratios for w in monitor.history] == [{"0": 0.0, "2": 0.0}] * 2
    assert [(a.site, a.metric, a.window, a.threshold) for a in seen] == [
        ("0", "update_ratio", 0, 1e-8),
        ("2", "update_ratio", 0, 1e-8),
    ]  # once per layer: the second window is still below, no new alert
    assert monitor.alerts == seen and "below 1e-08" in seen[0].message

    model = _model()
    with Monitor(model, every=2, update_ratio=True, update_ratio_bounds=None) as quiet:
        _train(model, torch.optim.SGD(model.parameters(), lr=0.0), 2)
    assert quiet.alerts == [] and quiet.history[0].update_ratios == {"0": 0.0, "2": 0.0}


def test_a_huge_lr_alerts_above_ten() -> None:
    model = _model()
    with Monitor(model, every=2, update_ratio=True, update_ratio_bounds=(1e-8, 10.0)) as monitor:
        _train(model, torch.optim.SGD(model.parameters(), lr=1e4), 2)
    ratios = monitor.history[0].update_ratios
    above = [a for a in monitor.alerts if a.metric == "update_ratio"]
    assert above and all(ratios[a.site] > 10 and a.threshold == 10.0 for a in above)
    assert "above 10" in above[0].message


def test_a_frozen_layer_reads_zero_is_not_copied_and_not_alerted() -> None:
    model = _model()
    model[0].weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    with Monitor(model, every=3, update_ratio=True) as monitor:
        weights = _train(model, torch.optim.SGD(params, lr=0.5), 2)
        assert monitor._updates is not None and len(monitor._updates.snapshots) == 1
    (window,) = monitor.history
    assert window.update_ratios["0"] == 0.0 and window.frozen_layers == ("0",)
    assert window.update_ratios["2"] == pytest.approx(_ratio(weights[0]["2"], weights[2]["2"]))
    assert monitor.alerts == []
    assert monitor.update_frame()["frozen"].tolist() == [True, False]


def test_the_model_and_optimizer_are_bit_identical_to_a_run_without_the_monitor() -> None:
    def run(update_ratio: bool | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        model = _model()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        if update_ratio is None:
            _train(model, optimizer, 5)
        else:
            with Monitor(model, every=2, update_ratio=update_ratio):
                _train(model, optimizer, 5)
        assert all(p.grad is not None for p in model.parameters())
        grads = {f"grad.{n}": p.grad.clone() for n, p in model.named_parameters()}  # type: ignore[union-attr]
        return {**model.state_dict(), **grads}, optimizer.state_dict()

    plain, plain_optimizer = run(None)
    for update_ratio in (True, False):
        state, optimizer_state = run(update_ratio)
        assert state.keys() == plain.keys()
        assert all(torch.equal(state[k], plain[k]) for k in plain)
        for key, moments in plain_optimizer["state"].items():
            for name, value in moments.items():
                assert torch.equal(optimizer_state["state"][key][name], value)


def test_off_by_default_holds_no_snapshot() -> None:
    model = _model()
    with Monitor(model, every=2) as monitor:
        _train(model, torch.optim.SGD(model.parameters(), lr=0.5), 3)
        assert monitor._updates is None  # no UpdateRatios, so no snapshot tensor anywhere
    assert all(w.update_ratios == {} for w in monitor.history)
    assert monitor.update_frame().empty
    from neurodiag.monitor.window import window_scalars

    assert not any("update_ratio" in key for key in window_scalars(monitor.history[0]))


def test_wrapper_names_are_stripped_and_tied_weights_count_once() -> None:
    class Wrapper(nn.Module):  # as DDP: the user's model under ``module``
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.module(x)
            return out

    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.LayerNorm(4))
    inner[2].weight = inner[0].weight  # tied
    model = Wrapper(inner)
    with Monitor(model, every=1, update_ratio=True) as monitor:
        _train_any(model, 1)
    assert list(monitor.history[0].update_ratios) == ["0", "3"]


def _train_any(model: nn.Module, steps: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()


def test_lightning_callback_logs_the_update_ratios(tmp_path: Path) -> None:
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    from neurodiag.integrations.lightning import NeurodiagCallback
    from tests.test_lightning import Net, _fit

    logger = CSVLogger(str(tmp_path), name="run")
    callback = NeurodiagCallback(update_ratio=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(Net(lr=0.1), callback, logger=logger, max_epochs=2)
    # the head is never called by training_step: no gradient, no update: one alert, at epoch 0
    assert [(a.site, a.epoch) for a in callback.alerts] == [("head", 0)]
    metrics = pd.read_csv(Path(logger.log_dir) / "metrics.csv")
    ratios = metrics.dropna(subset=["neurodiag/update_ratio/net.0"])
    assert len(ratios) == 2  # one per epoch window
    frame = callback.update_frame()
    assert set(frame["layer"]) == {"net.0", "net.2", "head"}
    assert frame[frame["layer"] == "net.0"]["update_ratio"].tolist() == pytest.approx(
        ratios["neurodiag/update_ratio/net.0"].tolist()
    )
    assert {"neurodiag/min_update_ratio", "neurodiag/max_update_ratio"} <= set(metrics.columns)
