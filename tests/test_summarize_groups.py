"""A report computes sites of equal shape together (``summarize_sites``): never mixes them up.

Each site's row and per-neuron arrays must be exactly what the site gives summarised alone, whatever
its neighbours in the group hold (empty sites, neurons that saw only NaN, step sites, Bernstein δ̄,
another dtype or width), and every value must be a plain Python scalar, as JSON and the tables
expect.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurodiag.activations import derivatives
from neurodiag.config import ScanConfig
from neurodiag.sites.site import reduction_dims
from neurodiag.stats.base import StateSpec
from neurodiag.stats.bundle import SiteStats, summarize_sites
from neurodiag.stats.registry import StatisticRegistry
from neurodiag.stats.statistic import Column, Computed, Statistic

_PLAIN = (float, int, bool, str, type(None))


def _site(config: ScanConfig, draw: st.DrawFn) -> tuple[SiteStats, float | None]:
    neurons = draw(st.sampled_from([1, 3, 4]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    stats = SiteStats(neurons, torch.device("cpu"), dtype, config)
    # ReLU sites may take the step shortcut (max/min |σ'| derived from the totals when read);
    # tanh sites never do, and a group mixes both
    tanh = draw(st.booleans())
    for _ in range(draw(st.integers(0, 2))):  # 0: a site that never ran
        rows = draw(st.integers(1, 5))
        seed = draw(st.integers(0, 2**16))
        x = torch.randn(rows, neurons, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        x = x * draw(st.sampled_from([1.0, 1e3, 1e-3]))  # massive, and tiny, activations
        if draw(st.booleans()):
            x[:, 0] = math.nan  # a neuron that saw only NaN
        if draw(st.booleans()):
            x[:, -1] = -1.0  # a dead neuron
        dims = reduction_dims(2, 1)
        if tanh:
            stats.observe_forward(x, x.tanh(), derivatives.tanh, dims)
        else:
            stats.observe_forward(x, x.relu(), derivatives.relu, dims, draw(st.booleans()))
        stats.observe_grad(x * 0.5, reduction_dims(2, 1))
    delta_bar = draw(st.sampled_from([None, 0.1, 0.5]))
    return stats, delta_bar


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@st.composite
def _sites(draw: st.DrawFn) -> tuple[list[SiteStats], list[float | None]]:
    config = ScanConfig(
        rank=draw(st.booleans()),
        dead_window=draw(st.sampled_from(["scan", "batch"])),
        tau=draw(st.sampled_from([0.0, 0.1])),
    )
    drawn = [_site(config, draw) for _ in range(draw(st.integers(1, 6)))]
    return [s for s, _ in drawn], [d for _, d in drawn]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sites())
def test_a_group_summary_equals_each_site_alone(
    sites: tuple[list[SiteStats], list[float | None]],
) -> None:
    stats, delta_bars = sites
    together = summarize_sites(stats, delta_bars)
    assert len(together) == len(stats)
    for one, delta_bar, summary in zip(stats, delta_bars, together, strict=True):
        (alone,) = summarize_sites([one], [delta_bar])
        assert summary.row.keys() == alone.row.keys()
        for name, value in summary.row.items():
            assert isinstance(value, _PLAIN), (name, type(value))
            assert _same(value, alone.row[name]), (name, value, alone.row[name])
        assert summary.neurons.keys() == alone.neurons.keys()
        for name, tensor in summary.neurons.items():
            assert tensor.shape[0] == one.neurons, name
            torch.testing.assert_close(
                tensor, alone.neurons[name], equal_nan=True, rtol=0, atol=0, msg=name
            )


def test_a_group_keeps_each_site_apart() -> None:
    """Three equal-width sites, one dead, one half dead, one alive: the rows differ as they should
    (a reduction over the wrong axis would give every site the group's share)."""
    config = ScanConfig()
    sites = [SiteStats(2, torch.device("cpu"), torch.float32, config) for _ in range(3)]
    for stats, z in zip(
        sites,
        ([[-1.0, -1.0], [-2.0, -1.0]], [[-1.0, 1.0], [-2.0, 2.0]], [[1.0, 1.0], [2.0, 3.0]]),
        strict=True,
    ):
        x = torch.tensor(z)
        stats.observe_forward(x, x.relu(), derivatives.relu, (0,), step=True)
        stats.observe_grad(torch.full_like(x, float(x.sum())), (0,))
    rows = [s.row for s in summarize_sites(sites, [None, 0.5, 0.5])]
    assert [r["dead_pct"] for r in rows] == [100.0, 50.0, 0.0]
    assert [r["inactive_pct"] for r in rows] == [100.0, 50.0, 0.0]
    assert [r["mag"] for r in rows] == pytest.approx([5.0, 0.0, 7.0])
    assert [r["bound_ok"] for r in rows] == [None, False, True]
    assert math.isnan(rows[0]["delta_bar"]) and rows[2]["delta_bar"] == 0.5


class _OneValueForAll(Statistic):
    """A statistic written for one site at a time: ``float(...)`` over the whole group."""

    name = "one_value"
    states = (StateSpec("finite_positions", "sum", count=True),)
    columns = (Column("one_value", "float64", "value", "a scalar per group"),)

    def compute(self, states: Any, row: Any, ctx: Any) -> Computed:
        return Computed({"one_value": float(states["finite_positions"].sum())})


class _FlatPerNeuron(Statistic):
    """Per-neuron values without the leading sites axis."""

    name = "flat"
    states = (StateSpec("finite_positions", "sum", count=True),)
    columns = (Column("flat_sum", "float64", "value", "a value per site"),)

    def compute(self, states: Any, row: Any, ctx: Any) -> Computed:
        finite = states["finite_positions"]
        return Computed({"flat_sum": finite.sum(axis=-1)}, {"flat": finite.sum(axis=0)})


@pytest.mark.parametrize(
    ("statistic", "message"),
    [
        (_OneValueForAll, "column 'one_value' must have one value per site"),
        (_FlatPerNeuron, r"per-neuron 'flat' must be \(sites=2, neurons"),
    ],
)
def test_a_statistic_written_for_one_site_gets_an_error_naming_it(
    statistic: type[Statistic], message: str
) -> None:
    """A plug-in statistic that returns one value for the group, or per-neuron values without the
    sites axis, is told so by name instead of filling the report with wrong numbers."""
    registry = StatisticRegistry()
    registry.register(statistic)
    config = ScanConfig()
    sites = [SiteStats(3, torch.device("cpu"), torch.float32, config, registry) for _ in range(2)]
    with pytest.raises(TypeError, match=f"statistic '{statistic.name}': {message}"):
        summarize_sites(sites, [None, None])
