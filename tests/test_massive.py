"""Massive activations (Sun et al. 2024): max |a| per neuron and per site, and the massive rule.

max |a| is one more per-call reduction (``ForwardReductions.max_abs_act``) computed on every
measuring path (exact masks, the CPU shortcuts, the ReLU step path, the traced path for
compiled graphs): each is pinned to a plain computation here, on clean and poisoned tensors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from typer.testing import CliRunner

import neurodiag
from neurodiag.activations import derivatives
from neurodiag.check import evaluate
from neurodiag.cli import app
from neurodiag.config import ScanConfig
from neurodiag.report.model import COLUMN_BY_NAME
from neurodiag.stats import reductions
from neurodiag.stats.bundle import SiteStats
from neurodiag.stats.massive import MASSIVE_MIN, MASSIVE_RATIO, massive_neurons
from neurodiag.stats.reductions import exact_forward, reduce_forward, traced_forward
from neurodiag.stats.traced import TracedSiteStates
from tests.fixtures.models import ZOO, make_batches
from tests.test_reductions import ACTIVATIONS, SHAPES, _poisoned

EPS = 1e-3


def plain_max_abs(z: Tensor | None, a: Tensor, dims: tuple[int, ...]) -> Tensor:
    """max |a| per neuron over the entries where z (if kept) and a are finite; 0 where none."""
    ok = torch.isfinite(a) if z is None else torch.isfinite(a) & torch.isfinite(z)
    if not dims:
        return torch.where(ok, a.abs(), torch.zeros_like(a)).reshape(-1)
    feature = next(i for i in range(a.dim()) if i not in dims)
    rows = torch.where(ok, a.abs(), torch.zeros_like(a)).movedim(feature, -1)
    return rows.reshape(-1, a.shape[feature]).amax(0)


@pytest.fixture(params=["whole", "tiny_slices", "device_path"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The scratch whole, slices of a row or two, or the accelerator's exact path."""
    if request.param == "tiny_slices":
        monkeypatch.setattr(reductions, "SLICE_ELEMENTS", 10)
        monkeypatch.setattr(reductions, "SCRATCH_LIMIT", 24)
    if request.param == "device_path":
        monkeypatch.setattr(reductions, "HOST_READ_DEVICES", frozenset())
    reductions.release_scratch()
    yield request.param
    reductions.release_scratch()


# -- the per-call reduction, on every path -----------------------------------------------------
@pytest.mark.parametrize(("shape", "dims"), SHAPES)
@pytest.mark.parametrize("poison", [False, True])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("inplace", [False, True])
def test_max_abs_act_on_every_path_is_the_plain_max(
    name: str, shape: tuple[int, ...], dims: tuple[int, ...], poison: bool, inplace: bool,
    path: str,
) -> None:  # fmt: skip
    fn, derivative, step = ACTIVATIONS[name]
    z = _poisoned(shape, 5) if poison else torch.randn(shape, dtype=torch.float64) * 50
    a = fn(z)
    pre = None if inplace and name in ("relu", "tanh") else z
    want = plain_max_abs(pre, a, dims)
    for red in (
        reduce_forward(pre, a, derivative, dims, EPS, torch.float64, step=step),
        exact_forward(pre, a, derivative, dims, EPS, torch.float64),
        traced_forward(pre, a, derivative, dims, EPS, torch.float64, step=step),
    ):
        torch.testing.assert_close(red.max_abs_act, want, rtol=0, atol=0)


@pytest.mark.parametrize("rows", [9, 300])  # 300 x 256: above SCRATCH_LIMIT (ReLU: integer max)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_max_abs_act_of_low_precision_activations_is_kept_in_the_state_dtype(
    dtype: torch.dtype, rows: int
) -> None:
    z = (torch.randn(rows, 256) * 300).to(dtype)
    z[0, 3] = -0.0  # relu(-0.0) is -0.0: the integer max must still find the positives
    for step, fn, derivative in ((True, torch.relu, derivatives.relu), (False, F.gelu, None)):
        deriv = derivative or derivatives.gelu
        red = reduce_forward(z, fn(z), deriv, (0,), EPS, torch.float32, step=step)
        assert red.max_abs_act.dtype == torch.float32
        torch.testing.assert_close(red.max_abs_act, fn(z).abs().amax(0).float())


# -- scans ---------------------------------------------------------------------------------------
def _brute_max_abs(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Per site, max |a| per neuron over finite entries of all batches, from the full tensors."""
    ref = copy.deepcopy(model).eval()
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for x, _ in batches:
            _, sites = ref.reference(x)
            for site, z, a, _, fdim in sites:
                ok = torch.isfinite(z) & torch.isfinite(a)
                rows = torch.where(ok, a.abs(), -math.inf).movedim(fdim, -1)
                peak = rows.reshape(-1, a.shape[fdim]).amax(0)
                out[site] = torch.maximum(out[site], peak) if site in out else peak
    return {site: torch.where(p == -math.inf, math.nan, p) for site, p in out.items()}


@pytest.mark.parametrize("poison", [False, True])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_scan_max_abs_activation_matches_brute_force(name: str, poison: bool, path: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().double()
    batches = make_batches(name, model)
    if poison:  # one NaN input entry: its sample's entries are left out
        if not batches[1][0].is_floating_point():
            pytest.skip("token ids: no NaN input")
        x = batches[1][0].clone()
        x.view(x.shape[0], -1)[3, 1] = math.nan
        batches[1] = (x, batches[1][1])
    report = neurodiag.scan(model, batches)
    for site, want in _brute_max_abs(model, batches).items():
        got = report.neurons[site].max_abs_activation
        torch.testing.assert_close(got.double(), want, rtol=0, atol=0, equal_nan=True)
        assert report.row(site)["max_abs_activation"] == float(want.nan_to_num(-1).max()), site


class _Planted(nn.Module):
    """A ReLU over a fixed activation: O(1) channels and one planted channel."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x)


def _planted(value: float, background: float = 1.0, nan: bool = False) -> neurodiag.Report:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        x = background * (0.5 + torch.rand(32, 16, generator=g))  # mean |a| ~ background
        x[:, 5] = value * torch.rand(32, generator=g).clamp(min=0.1)
        x[7, 5] = value  # the channel's max
        if nan:
            x[3, 5] = math.nan
            x[4, 6] = math.inf
        batches.append(x)
    return neurodiag.scan(_Planted(), batches, gradients=False)


def test_a_channel_at_2e4_among_order_one_values_is_massive() -> None:
    report = _planted(2e4)
    row = report.row("act")
    assert row["max_abs_activation"] == 2e4
    assert row["massive"] == 1
    assert report.neurons["act"].massive.tolist() == [i == 5 for i in range(16)]


def test_a_channel_at_50_is_not_massive() -> None:
    row = _planted(50.0).row("act")
    assert row["max_abs_activation"] == 50.0 and row["massive"] == 0  # not > 100


def test_a_channel_at_2e4_over_a_median_of_100_is_not_massive() -> None:
    """2e4 / ~100 = ~200 < 1000: large, but not an outlier of the layer."""
    report = _planted(2e4, background=100.0)
    row = report.row("act")
    median = float(report.neurons["act"].mean_abs_activation.median())
    assert 90 < median < 110 and MASSIVE_RATIO * median > 2e4
    assert row["max_abs_activation"] == 2e4 and row["massive"] == 0


@pytest.mark.parametrize(
    ("value", "background", "massive"),
    [
        (MASSIVE_MIN, 2**-10, 0),  # > 100 strictly
        (MASSIVE_MIN + 1, 2**-10, 1),
        (2e4, 2e4 / MASSIVE_RATIO, 1),  # exactly 1000× the median: massive
        (2e4, 20.5, 0),  # (values exact in the float32 the scan runs in)
    ],
)
def test_massive_rule_at_its_edges(value: float, background: float, massive: int) -> None:
    """Constant channels: the median of the per-neuron means is exactly ``background``."""
    x = torch.full((8, 16), background, dtype=torch.float64)
    x[:, 5] = value
    report = neurodiag.scan(_Planted(), [x], gradients=False)
    assert float(report.neurons["act"].mean_abs_activation.median()) == background
    assert report.row("act")["massive"] == massive


def test_non_finite_entries_are_left_out_of_max_abs() -> None:
    report = _planted(2e4, nan=True)
    row = report.row("act")
    assert row["nonfinite"] == 6 and row["max_abs_activation"] == 2e4 and row["massive"] == 1
    peak = report.neurons["act"].max_abs_activation
    assert torch.isfinite(peak).all() and float(peak[6]) < 2


def test_a_site_without_finite_entries_has_no_max() -> None:
    x = torch.full((4, 3), math.nan)
    row = neurodiag.scan(_Planted(), [x], gradients=False).row("act")
    assert math.isnan(row["max_abs_activation"]) and row["massive"] is None


def test_compiled_traced_states_fold_max_abs_act() -> None:
    """``TracedSiteStates`` (the compiled path) folds the new field like ``SiteStats`` does."""
    config = ScanConfig()
    for fn, derivative, step in ((torch.relu, derivatives.relu, True),
                                 (torch.tanh, derivatives.tanh, False)):  # fmt: skip
        eager = SiteStats(4, torch.device("cpu"), torch.float64, config)
        graph = SiteStats(4, torch.device("cpu"), torch.float64, config)
        traced = TracedSiteStates(graph, derivative, step)
        for seed in range(3):
            z = _poisoned((6, 4), seed) * 40
            eager.observe_forward(z, fn(z), derivative, (0,), step)
            traced.observe_forward(z, fn(z), (0,))
        traced.drain_into(graph)
        torch.testing.assert_close(graph.store["max_abs_act"], eager.store["max_abs_act"])


# -- check ---------------------------------------------------------------------------------------
def test_check_thresholds_on_max_abs_and_massive() -> None:
    report = _planted(2e4)
    assert not evaluate(report, {"max_abs_activation": 1e3}).ok
    assert evaluate(report, {"max_abs_activation": 2e4}).ok  # a limit passes on equality
    failed = evaluate(report, {"max_massive": 0})
    assert not failed.ok
    assert failed.violations[0].describe() == "massive 1 > 0"
    assert evaluate(_planted(50.0), {"max_massive": 0}).ok


def test_columns_stay_out_of_the_terminal_table() -> None:
    for name in ("max_abs_activation", "massive"):
        assert not COLUMN_BY_NAME[name].table


def test_check_cli_flags(tmp_path: Any) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))\n"
    )
    args = ["check", f"{path}:build", "--max-batches", "1", "--input-shape", "6", "-f", "csv"]
    runner = CliRunner()
    failed = runner.invoke(app, [*args, "--max-abs-activation", "1e-3"])
    assert failed.exit_code == 1, failed.stderr
    assert "max_abs_activation" in failed.stdout
    passed = runner.invoke(app, [*args, "--max-massive", "0", "--max-abs-activation", "1e6"])
    assert passed.exit_code == 0, passed.stderr


def test_a_neuron_at_minus_zero_everywhere_reads_zero() -> None:
    """relu(-0.0) is -0.0, and the ReLU shortcut's integer max returns it as such: read as 0."""
    x = torch.rand(300, 256)
    x[:, 2] = -0.0
    report = neurodiag.scan(_Planted(), [x], gradients=False)
    peak = float(report.neurons["act"].max_abs_activation[2])
    assert peak == 0.0 and math.copysign(1.0, peak) == 1.0


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(0, 1e6, allow_nan=False, width=32), min_size=1, max_size=12),
    unmeasured=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_the_site_median_is_numpys_median_of_the_measured_means(
    values: list[float], unmeasured: list[bool]
) -> None:
    """Even counts too (the mean of the two middle values, not either one)."""
    mean = np.array(values, dtype=np.float64)
    measured = ~np.array(unmeasured[: len(values)])
    _, median = massive_neurons(mean * 2000.0, mean, measured)
    if measured.any():
        assert median == float(np.median(mean[measured]))
    else:
        assert math.isnan(median)
