"""Monitor inside a hand-written training loop: same numbers as scan, no hook left behind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import neurodiag
from tests.fixtures.models import ZOO, make_batches
from tests.test_scan_behaviour import _hook_counts


def test_monitor_matches_scan_on_the_same_batches() -> None:
    torch.manual_seed(0)
    model = ZOO["functional"]().double().eval()
    batches = make_batches("functional", model)
    expected = neurodiag.scan(model, batches).to_frame()
    with neurodiag.Monitor(model) as monitor:
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    got = monitor.report().to_frame()
    assert list(got["site"]) == list(expected["site"])
    for column in ("neurons", "dead_pct", "dormant_pct", "grad_dormant_pct", "nonfinite"):
        assert list(got[column]) == list(expected[column]), column
    for column in ("mag", "min_abs_deriv"):
        assert got[column].tolist() == pytest.approx(expected[column].tolist(), rel=1e-9)


def test_monitor_in_an_sgd_loop_reports_every_site_and_leaves_no_hook() -> None:
    torch.manual_seed(0)
    model = ZOO["conv"]()
    hooks_before = _hook_counts(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 3, 6, 6)
    y = torch.randint(0, 2, (8,))
    with neurodiag.Monitor(model, every=2) as monitor:
        for _ in range(5):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert _hook_counts(model) == hooks_before
    report = monitor.report()
    assert report.sites == ["act", "act2"]
    assert report.header.batches == 5
    # every=2 over 5 steps: windows end at steps 2, 4 and (on exit) 5
    assert [h.step_end for h in monitor.history] == [2, 4, 5]
    assert report.row("act")["dead_pct"] == pytest.approx(100 * 2 / 6)  # bias -100 channels


def test_monitor_removes_hooks_when_the_loop_raises() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    before = _hook_counts(model)
    with pytest.raises(ValueError, match="stop"), neurodiag.Monitor(model):
        model(torch.randn(2, 3)).sum().backward()
        raise ValueError("stop")
    assert _hook_counts(model) == before
    assert torch.overrides._get_current_function_mode() is None


def test_monitor_adds_no_forward_or_backward() -> None:
    calls = []
    model = nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 1))
    model[0].register_forward_hook(lambda *a: calls.append("forward"))
    with neurodiag.Monitor(model):
        model(torch.randn(2, 3)).sum().backward()
    assert calls == ["forward"]


def test_monitor_rejects_bad_every() -> None:
    with pytest.raises(ValueError, match="every"):
        neurodiag.Monitor(nn.ReLU(), every=0)


@pytest.mark.parametrize("name", ["functional", "inplace_relu", "smooth"])
def test_measure_every_equals_a_scan_of_the_measured_batches(name: str) -> None:
    """measure_every=3 over 7 steps measures steps 0, 3 and 6 (forward and backward) only."""
    torch.manual_seed(0)
    model = ZOO[name]().double().eval()
    batches = make_batches(name, model, n_batches=7)
    expected = neurodiag.scan(model, batches[::3]).to_frame()
    with neurodiag.Monitor(model, measure_every=3) as monitor:
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    report = monitor.report()
    got = report.to_frame()
    assert (monitor.steps, monitor.measured_steps, report.header.batches) == (7, 3, 3)
    assert "measured 3 of 7 steps (measure_every=3)" in report.header.notes
    assert list(got["site"]) == list(expected["site"])
    for column in ("neurons", "dead_pct", "dormant_pct", "grad_dormant_pct", "nonfinite"):
        assert list(got[column]) == list(expected[column]), column
    for column in ("mag", "min_abs_deriv"):
        assert got[column].tolist() == pytest.approx(expected[column].tolist(), rel=1e-9)


def test_measure_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="measure_every"):
        neurodiag.Monitor(nn.ReLU(), measure_every=0)


def test_windows_without_a_measured_step_add_no_history() -> None:
    """every=2 with measure_every=3 over 8 steps: steps 0, 3, 6 measured; windows [0,2) [2,4)
    [4,6) [6,8) hold 1, 1, 0, 1 measured steps, so three entries, none from empty statistics."""
    torch.manual_seed(0)
    model = ZOO["inplace_relu"]().double().eval()
    batches = make_batches("inplace_relu", model, n_batches=8)
    with neurodiag.Monitor(model, every=2, measure_every=3) as monitor:
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    assert [h.step_end for h in monitor.history] == [2, 4, 8]
    full = neurodiag.scan(model, batches[::3])
    assert monitor.report().row("act2")["dead_pct"] == full.row("act2")["dead_pct"]
    assert all(h.summary["max_dead_pct"] < 100.0 for h in monitor.history)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # C folds / PyTorch path
def test_a_deep_copy_of_a_monitored_model_never_feeds_the_monitor(dtype: torch.dtype) -> None:
    """``copy.deepcopy(model)`` with a Monitor attached (an EMA or SWA copy) copies the hooks;
    what the copy runs must not reach the original Monitor's states, forward or gradient."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)
    x = torch.randn(32, 8, dtype=dtype)
    with neurodiag.Monitor(model) as monitor:
        for _ in range(2):  # the second call takes the steady (lean) path
            model(x).sum().backward()
        (site,) = monitor._recorder.sites.values()
        before = {name: value.clone() for name, value in site.stats.store.items()}
        twin = copy.deepcopy(model)
        for _ in range(3):
            twin(x).sum().backward()
        changed = [n for n, v in site.stats.store.items() if not torch.equal(v, before[n])]
        assert changed == []
        model(x).sum().backward()  # the original still measures
        assert not torch.equal(site.stats.store["finite_positions"], before["finite_positions"])
