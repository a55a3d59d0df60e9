"""Representation rank (``rank=True``): effective rank and srank from a streaming Gram matrix.

The contract: the singular values of the site's stacked activations (rows: samples × positions
with every entry finite, columns: neurons), as ``torch.linalg.svdvals`` gives them.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

import neurodiag
from neurodiag.activations import derivatives
from neurodiag.cli import app
from neurodiag.config import ScanConfig
from neurodiag.errors import NeurodiagError
from neurodiag.report.model import COLUMN_BY_NAME
from neurodiag.stats import reductions
from neurodiag.stats.bundle import SiteStats
from neurodiag.stats.rank import effective_rank, singular_values, srank
from neurodiag.stats.traced import TracedSiteStates
from tests.fixtures.models import ZOO, make_batches
from tests.test_reductions import _poisoned


def ranks_of(rows: Tensor) -> tuple[float, int]:
    """The definitions, from svdvals of the (positions, neurons) matrix, written out again."""
    s = torch.linalg.svdvals(rows.double()).numpy()
    p = s[s > 0] / s.sum()
    kept = np.cumsum(s) / s.sum()
    return float(np.exp(-(p * np.log(p)).sum())), int(np.argmax(kept >= 0.99)) + 1


def _tanh_of_rank6() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))


def _inputs(n_batches: int, rows: int = 50, seed: int = 1) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 6, generator=g) for _ in range(n_batches)]


def _activations(model: nn.Module, batches: list[Tensor]) -> Tensor:
    with torch.no_grad():
        return torch.cat([model[1](model[0](x)) for x in batches])


def test_ranks_equal_svdvals_of_the_stacked_activations() -> None:
    """tanh is nonlinear: the rank is not 6, but it is what svdvals of the activations says."""
    model = _tanh_of_rank6()
    batches = _inputs(4)
    report = neurodiag.scan(model, batches, rank=True)
    want_erank, want_srank = ranks_of(_activations(model, batches))
    row = report.row("1")
    assert row["effective_rank"] == pytest.approx(want_erank, rel=1e-6)
    assert row["srank"] == want_srank
    assert 6 < want_erank < 32  # not a trivial case
    sigma = torch.linalg.svdvals(_activations(model, batches).double())
    torch.testing.assert_close(
        report.neurons["1"].singular_values, sigma, rtol=1e-6, atol=1e-6 * float(sigma[0])
    )


def test_several_batches_streamed_equal_one_big_batch() -> None:
    model = _tanh_of_rank6()
    batches = _inputs(5, rows=20)
    streamed = neurodiag.scan(model, batches, rank=True).row("1")
    whole = neurodiag.scan(model, [torch.cat(batches)], rank=True).row("1")
    assert streamed["effective_rank"] == pytest.approx(whole["effective_rank"], rel=1e-12)
    assert streamed["srank"] == whole["srank"]


def test_rows_with_a_non_finite_entry_are_left_out() -> None:
    """One NaN (or Inf) entry removes its whole row; the rest is svdvals of the other rows."""
    stats = SiteStats(5, torch.device("cpu"), torch.float64, ScanConfig(rank=True))
    kept = []
    for seed in range(3):
        z = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        z[2, seed] = [math.nan, math.inf, -math.inf][seed]
        stats.observe_forward(z, torch.tanh(z), derivatives.tanh, (0,))
        kept.append(torch.tanh(torch.cat([z[:2], z[3:]])))
    want = ranks_of(torch.cat(kept))
    (summary,) = neurodiag.stats.summarize_sites([stats], [None])
    assert summary.row["effective_rank"] == pytest.approx(want[0], rel=1e-9)
    assert summary.row["srank"] == want[1]
    assert int(stats.store["gram_rows"]) == 21


def test_scan_with_a_nan_sample_equals_the_scan_without_it() -> None:
    model = _tanh_of_rank6()
    batches = _inputs(3)
    poisoned = [x.clone() for x in batches]
    poisoned[1][4, 2] = math.nan
    without = [batches[0], torch.cat([batches[1][:4], batches[1][5:]]), batches[2]]
    got = neurodiag.scan(model, poisoned, rank=True).row("1")
    want = neurodiag.scan(model, without, rank=True).row("1")
    assert got["nonfinite"] > 0
    assert got["effective_rank"] == pytest.approx(want["effective_rank"], rel=1e-9)
    assert got["srank"] == want["srank"]


@pytest.mark.parametrize("name", ["conv", "sequence", "reused_relu", "smooth", "channels_last"])
@pytest.mark.parametrize("path", ["whole", "blocks", "device_path"])
def test_every_site_matches_svdvals(name: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neurons on dim 1 (conv), last (sequence, channels-last), reused modules, in row blocks and
    on the accelerator's path."""
    if path == "blocks":
        monkeypatch.setattr(reductions, "GRAM_BLOCK_ELEMENTS", 50)
    if path == "device_path":
        monkeypatch.setattr(reductions, "HOST_READ_DEVICES", frozenset())
    torch.manual_seed(0)
    model = ZOO[name]().double()
    batches = make_batches(name, model)
    report = neurodiag.scan(model, batches, rank=True)
    ref: Any = copy.deepcopy(model).eval()
    rows: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for x, _ in batches:
            for site, _, a, _, fdim in ref.reference(x)[1]:
                rows.setdefault(site, []).append(a.movedim(fdim, -1).reshape(-1, a.shape[fdim]))
    for site, parts in rows.items():
        erank, k = ranks_of(torch.cat(parts))
        assert report.row(site)["effective_rank"] == pytest.approx(erank, rel=1e-6), site
        assert report.row(site)["srank"] == k, site


def test_rank_is_off_by_default_and_costs_no_state() -> None:
    stats = SiteStats(8, torch.device("cpu"), torch.float32, ScanConfig())
    assert "gram" not in stats.store and "gram_rows" not in stats.store
    row = neurodiag.scan(_tanh_of_rank6(), _inputs(1)).row("1")
    assert math.isnan(row["effective_rank"]) and row["srank"] is None
    for name in ("effective_rank", "srank"):
        assert not COLUMN_BY_NAME[name].table


def test_sites_above_the_neuron_cap_are_skipped_with_a_warning() -> None:
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 8), nn.ReLU())
    stats = SiteStats(
        32, torch.device("cpu"), torch.float32, ScanConfig(rank=True, rank_max_neurons=16)
    )
    assert "gram" not in stats.store
    with pytest.warns(RuntimeWarning, match="32 neurons .*rank_max_neurons=16"):
        report = neurodiag.scan(model, _inputs(2), rank=True, rank_max_neurons=16)
    assert math.isnan(report.row("1")["effective_rank"]) and report.row("1")["srank"] is None
    assert report.row("3")["effective_rank"] > 0  # 8 neurons: measured


def test_rank_options_are_validated() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(NeurodiagError, match="rank_max_neurons"):
            ScanConfig(rank=True, rank_max_neurons=bad)  # type: ignore[arg-type]
    with pytest.raises(NeurodiagError, match="rank must be"):
        ScanConfig(rank="yes")  # type: ignore[arg-type]


def test_merged_windows_equal_one_store() -> None:
    """Gram and row count are "sum" states: merging (Monitor windows, ranks) is adding."""
    config = ScanConfig(rank=True)
    whole = SiteStats(4, torch.device("cpu"), torch.float64, config)
    left, right = whole.fresh(), whole.fresh()
    for seed, part in ((0, left), (1, right), (2, left)):
        z = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        for stats in (whole, part):
            stats.observe_forward(z, torch.relu(z), derivatives.relu, (0,), step=True)
    left.merge(right)
    torch.testing.assert_close(left.store["gram"], whole.store["gram"])
    assert float(left.store["gram_rows"]) == float(whole.store["gram_rows"]) == 21


@pytest.mark.parametrize("step", [True, False])
def test_compiled_traced_states_fold_the_gram_matrix(step: bool) -> None:
    fn, derivative = (torch.relu, derivatives.relu) if step else (torch.tanh, derivatives.tanh)
    config = ScanConfig(rank=True)
    eager = SiteStats(4, torch.device("cpu"), torch.float64, config)
    graph = SiteStats(4, torch.device("cpu"), torch.float64, config)
    traced = TracedSiteStates(graph, derivative, step)
    for seed in range(3):
        z = _poisoned((3, 5, 4), seed)
        eager.observe_forward(z, fn(z), derivative, (0, 1), step)
        traced.observe_forward(z, fn(z), (0, 1))
    traced.drain_into(graph)
    torch.testing.assert_close(graph.store["gram"], eager.store["gram"])
    assert float(graph.store["gram_rows"]) == float(eager.store["gram_rows"])
    assert traced.values["gram"].abs().sum() == 0  # drained back to empty


def test_monitor_measures_rank() -> None:
    model = _tanh_of_rank6()
    batches = _inputs(3)
    with neurodiag.Monitor(model, rank=True) as monitor:
        for x in batches:
            model(x).sum().backward()
    row = monitor.report().row("1")
    want_erank, want_srank = ranks_of(_activations(model, batches))
    assert row["effective_rank"] == pytest.approx(want_erank, rel=1e-6)
    assert row["srank"] == want_srank


def test_helpers_on_known_spectra() -> None:
    assert effective_rank(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert effective_rank(np.array([3.0, 0.0, 0.0])) == 1.0
    assert srank(np.array([1.0, 1.0, 1.0, 1.0])) == 4
    assert srank(np.array([0.99, 0.01])) == 1
    assert srank(np.array([0.98, 0.02])) == 2
    assert effective_rank(np.zeros(3)) == 0.0 and srank(np.zeros(3)) == 0
    # rank-deficient A: the Gram matrix's rounding is not read as a tail of small σ
    a = np.random.default_rng(0).normal(size=(200, 1)) @ np.ones((1, 64))
    sigma = singular_values(a.T @ a)
    assert np.count_nonzero(sigma) == 1 and effective_rank(sigma) == 1.0


def test_cli_rank_flag(tmp_path: Any) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))\n"
    )
    runner = CliRunner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on = runner.invoke(app, ["scan", f"{path}:build", "-f", "json", "--max-batches", "2",
                                 "--input-shape", "6", "--rank"])  # fmt: skip
        off = runner.invoke(app, ["scan", f"{path}:build", "-f", "json", "--max-batches", "2",
                                  "--input-shape", "6"])  # fmt: skip
        capped = runner.invoke(app, ["check", f"{path}:build", "-f", "json", "--max-batches",
                                     "2", "--input-shape", "6", "--rank",
                                     "--rank-max-neurons", "8"])  # fmt: skip
    assert on.exit_code == 0, on.stderr
    site = json.loads(on.stdout)["sites"][0]
    assert site["effective_rank"] > 1 and site["srank"] >= 1
    site = json.loads(off.stdout)["sites"][0]
    assert site["effective_rank"] is None and site["srank"] is None
    assert capped.exit_code == 0, capped.stderr
    assert json.loads(capped.stdout)["sites"][0]["effective_rank"] is None


def _compiled_windows(compiled: bool) -> Any:
    from tests.test_compile import BACKEND, SmallCnn, _model

    model = _model(SmallCnn, True)
    target: Any = torch.compile(model, backend=BACKEND) if compiled else model
    g = torch.Generator().manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with neurodiag.Monitor(target, every=2, rank=True) as monitor:
            for step in range(4):
                x = SmallCnn.batch(g)
                if step == 3:  # measured inside the graph: a non-finite row is left out
                    x[0, 0, 0, 0] = math.nan
                target(x).sum().backward()
                model.zero_grad()
    assert not compiled or monitor._graph.used
    columns = ["max_abs_activation", "massive", "effective_rank", "srank", "nonfinite"]
    return monitor.to_frame()[["window", "site", *columns]]


def test_windows_measured_inside_a_compiled_graph_equal_eager_windows() -> None:
    """rank and max |a| through ``traced_forward`` (the Monitor's compiled path) equal eager."""
    from tests.test_compile import _assert_frames_close

    torch._dynamo.reset()
    try:
        compiled, eager = _compiled_windows(True), _compiled_windows(False)
    finally:
        torch._dynamo.reset()
    assert compiled["effective_rank"].notna().all()
    _assert_frames_close(compiled, eager)


def test_a_site_without_a_finite_row_has_no_rank_and_a_zero_one_has_rank_0() -> None:
    config = ScanConfig(rank=True)
    nan, zero = (SiteStats(3, torch.device("cpu"), torch.float64, config) for _ in range(2))
    z = torch.randn(4, 3, dtype=torch.float64)
    z[:, 1] = math.nan  # every row has a NaN
    nan.observe_forward(z, torch.tanh(z), derivatives.tanh, (0,))
    z = -torch.rand(4, 3, dtype=torch.float64)  # ReLU: all zero
    zero.observe_forward(z, torch.relu(z), derivatives.relu, (0,), step=True)
    rows = [s.row for s in neurodiag.stats.summarize_sites([nan, zero], [None, None])]
    assert math.isnan(rows[0]["effective_rank"]) and rows[0]["srank"] is None
    assert rows[1]["effective_rank"] == 0.0 and rows[1]["srank"] == 0
