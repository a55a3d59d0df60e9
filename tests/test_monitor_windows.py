"""Monitor windows, manual steps, alerts and the TensorBoard adapter, against scans and by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import neurodiag
from neurodiag.monitor import Alert, Window, window_scalars
from neurodiag.report.model import COLUMNS
from neurodiag.report.render_table import to_table
from tests.fixtures.models import ZOO, make_batches

STAT_COLUMNS = ("neurons", "dead_pct", "dormant_pct", "grad_dormant_pct", "nonfinite")


def _assert_frames_equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got["site"]) == list(expected["site"])
    for column in STAT_COLUMNS:
        assert list(got[column]) == list(expected[column]), column
    for column in ("mag", "min_abs_deriv"):
        assert got[column].tolist() == pytest.approx(expected[column].tolist(), rel=1e-9)


def _train(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("name", ["functional", "smooth"])
def test_each_window_equals_a_scan_of_its_batches(name: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().double().eval()
    batches = make_batches(name, model, n_batches=7)
    with neurodiag.Monitor(model, every=3, track_cumulative=True) as monitor:
        _train(model, batches)
    assert [(w.step_start, w.step_end, w.kind) for w in monitor.history] == [
        (0, 3, "steps"),
        (3, 6, "steps"),
        (6, 7, "steps"),  # the last, shorter window closes on exit
    ]
    for window in monitor.history:
        piece = batches[window.step_start : window.step_end]
        _assert_frames_equal(window.report.to_frame(), neurodiag.scan(model, piece).to_frame())
        assert window.cumulative is not None
        so_far = neurodiag.scan(model, batches[: window.step_end]).to_frame()
        _assert_frames_equal(window.cumulative.to_frame(), so_far)
        assert window.batches == len(piece)
        assert window.samples == sum(len(x) for x, _ in piece)
    _assert_frames_equal(monitor.report().to_frame(), neurodiag.scan(model, batches).to_frame())


def test_a_layer_dying_shows_in_its_window_but_not_in_the_cumulative_report() -> None:
    """Units that fire in window 0 and never after are dead in window 1 (by hand: 3 of 6)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with neurodiag.Monitor(model, every=2) as monitor:
        with torch.no_grad():
            model[0].bias.fill_(100.0)  # every unit fires
        _train(model, [(x, y)] * 2)
        with torch.no_grad():
            model[0].bias[:3] = -100.0  # three units die
        _train(model, [(x, y)] * 2)
    dead = [w.report.row("1")["dead_pct"] for w in monitor.history]
    assert dead == [0.0, 50.0]
    assert monitor.report().row("1")["dead_pct"] == 0.0  # each fired at some point
    assert monitor.history[1].summary["max_dead_pct"] == 50.0


def test_history_frame_has_one_row_per_window_and_site() -> None:
    torch.manual_seed(0)
    model = ZOO["conv"]().double()
    batches = make_batches("conv", model, n_batches=4)
    with neurodiag.Monitor(model, every=2) as monitor:
        monitor.epoch = 0
        _train(model, batches[:2])
        monitor.epoch = 1
        _train(model, batches[2:])
    frame = monitor.to_frame()
    assert list(frame.columns) == [
        "window",
        "window_kind",
        "epoch",
        "step_start",
        "step_end",
        "samples",
        "batches",
        *COLUMNS,
    ]
    assert len(frame) == 2 * len(monitor.report().rows)
    assert frame.groupby("window")["step_start"].first().tolist() == [0, 2]
    # window 0 closes when step 2 starts: the epoch is already 1 (label the epoch before it)
    assert frame["epoch"].dtype == "Int64"
    assert frame["site"].tolist() == ["act", "act2", "act", "act2"]
    with pytest.raises(ValueError, match="track_cumulative"):
        monitor.to_frame(cumulative=True)
    assert list(neurodiag.Monitor(model).to_frame().columns) == list(frame.columns)  # no window


def test_window_header_and_table_name_the_window() -> None:
    torch.manual_seed(0)
    model = ZOO["conv"]().double()
    batches = make_batches("conv", model, n_batches=3)
    with neurodiag.Monitor(model, steps="manual") as monitor:
        monitor.epoch = 4
        for x, y in batches:
            monitor.begin_step()
            F.cross_entropy(model(x), y).backward()
            monitor.end_step()
        window = monitor.end_window("epoch")
    assert window is not None and window.report.header.window == "epoch 4 · steps 0–2"
    assert "window" in to_table(window.report)
    assert "epoch 4 · steps 0–2" in to_table(window.report)
    cumulative = monitor.report().header
    assert cumulative.window == "cumulative (every step since the start) · steps 0–2"
    assert neurodiag.scan(model, batches).header.window is None  # a scan has no window


def test_manual_steps_measure_only_inside_a_step_and_count_samples() -> None:
    """Several forwards in one step (micro-batches) are one step; passes outside count nothing."""
    torch.manual_seed(0)
    model = ZOO["functional"]().double().eval()
    batches = make_batches("functional", model, n_batches=4)
    with neurodiag.Monitor(model, steps="manual") as monitor:
        model(batches[3][0])  # a sanity/validation pass before training: not measured
        monitor.begin_step()  # samples from the model's forward inputs
        _train(model, batches[:2])
        monitor.end_step()
        model(batches[3][0])  # validation between steps
        monitor.begin_step(samples=1000)  # samples as the loop knows them
        _train(model, batches[2:3])
        monitor.end_step()
    report = monitor.report()
    assert (monitor.steps, report.header.batches) == (2, 2)
    assert report.header.samples == len(batches[0][0]) + len(batches[1][0]) + 1000
    _assert_frames_equal(report.to_frame(), neurodiag.scan(model, batches[:3]).to_frame())


def test_manual_steps_with_every_close_windows_at_end_step() -> None:
    torch.manual_seed(0)
    model = ZOO["conv"]().double()
    batches = make_batches("conv", model, n_batches=5)
    seen: list[Window] = []
    with neurodiag.Monitor(model, steps="manual", every=2, on_window=seen.append) as monitor:
        for x, y in batches:
            monitor.begin_step()
            F.cross_entropy(model(x), y).backward()
            monitor.end_step()
            if monitor.steps == 2:
                assert len(seen) == 1  # closed at end_step, not at the next begin_step
    assert [w.step_end for w in seen] == [2, 4, 5]
    assert seen[0].report.neurons  # listeners get per-neuron values ...
    assert not monitor.history[0].report.neurons  # ... a long history does not keep them


def test_steps_must_be_forward_or_manual() -> None:
    with pytest.raises(ValueError, match="steps"):
        neurodiag.Monitor(nn.ReLU(), steps="batch")  # type: ignore[arg-type]


def test_alerts_fire_once_per_crossing_and_again_after_recovery() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    fired: list[Alert] = []
    bias = [100.0, -100.0, -100.0, 100.0, -100.0]  # healthy, dead, dead, healthy, dead
    monitor = neurodiag.Monitor(
        model, every=1, thresholds={"max_dead_pct": 30}, on_alert=fired.append
    )
    with monitor:
        for epoch, value in enumerate(bias):
            monitor.epoch = epoch
            with torch.no_grad():
                model[0].bias.fill_(100.0)
                model[0].bias[:3] = value
            _train(model, [(x, y)])
    assert [(a.site, a.metric, a.step, a.window) for a in fired] == [
        ("1", "dead_pct", 2, 1),
        ("1", "dead_pct", 5, 4),
    ]
    first = fired[0]
    assert (first.value, first.threshold, first.rule) == (50.0, 30, "max_dead_pct")
    assert "dead_pct 50.0% > 30%" in str(first)
    assert monitor.alerts == fired and monitor.history[1].alerts == (first,)


def test_window_scalars_names_and_missing_values() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with neurodiag.Monitor(model, every=1) as monitor:
        model(torch.randn(5, 3))  # no backward: gradient columns have no value
    scalars = window_scalars(monitor.history[0])
    assert scalars["neurodiag/1/dead_pct"] == monitor.history[0].report.row("1")["dead_pct"]
    assert "neurodiag/max_dead_pct" in scalars
    assert "neurodiag/1/mag" not in scalars  # not logged as NaN
    assert not any(
        key.startswith("neurodiag/1/") for key in window_scalars(monitor.history[0], per_site=False)
    )


def test_tensorboard_event_file_holds_per_site_scalars_and_histograms(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from neurodiag.integrations.tensorboard import TensorBoardWindows

    torch.manual_seed(0)
    model = ZOO["conv"]().double()
    batches = make_batches("conv", model, n_batches=4)
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardWindows(writer, histograms=True)
    with neurodiag.Monitor(model, every=2, on_window=sink) as monitor:
        _train(model, batches)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    dead = events.Scalars("neurodiag/act/dead_pct")
    assert [(e.step, e.value) for e in dead] == [
        (w.step_end, pytest.approx(w.report.row("act")["dead_pct"])) for w in monitor.history
    ]
    assert {"neurodiag/act2/mag", "neurodiag/max_dead_pct"} <= set(tags["scalars"])
    assert "neurodiag/act/dormant_score" in tags["histograms"]
    histogram = events.Histograms("neurodiag/act/dormant_score")[0].histogram_value
    assert histogram.num == monitor.report().row("act")["neurons"]


@pytest.mark.parametrize("name", ["functional", "inplace_relu"])
def test_manual_steps_measure_a_submodule_call_like_a_scan_of_it(name: str) -> None:
    """Lightning style: the monitored module's own forward never runs, ``self.net(x)`` does.
    Module and functional sites (found through the step's function mode) match a scan of net."""
    torch.manual_seed(0)
    net = ZOO[name]().double().eval()
    batches = make_batches(name, net, n_batches=3)
    wrapper = nn.Module()
    wrapper.net = net
    with neurodiag.Monitor(wrapper, steps="manual") as monitor:
        for x, y in batches:
            monitor.begin_step(samples=len(x))
            F.cross_entropy(wrapper.net(x), y).backward()
            monitor.end_step()
    expected = neurodiag.scan(net, batches).to_frame()
    expected["site"] = [
        s.replace("<root>", "net") if s.startswith("<root>") else f"net.{s}"
        for s in expected["site"]
    ]
    got = monitor.report().to_frame()
    _assert_frames_equal(got, expected)
