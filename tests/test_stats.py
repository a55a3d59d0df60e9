"""Statistic declarations, the state store and the host math, against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neurodiag.activations import derivatives
from neurodiag.config import ScanConfig
from neurodiag.errors import NeurodiagError
from neurodiag.report.model import COLUMNS
from neurodiag.sites.site import reduction_dims
from neurodiag.stats import STATISTICS, Column, Statistic
from neurodiag.stats.base import StateSpec, StateStore
from neurodiag.stats.bundle import SiteStats, summarize_sites
from neurodiag.stats.registry import StatisticRegistry
from neurodiag.stats.statistic import normalized_scores


def test_normalized_scores_brute_force() -> None:
    m = np.array([0.0, 1.0, 2.0, 5.0])
    np.testing.assert_allclose(normalized_scores(m), m / m.mean())


def test_normalized_scores_all_zero_are_all_dormant() -> None:
    assert (normalized_scores(np.zeros(3)) == 0).all()


def test_normalized_scores_ignore_neurons_without_a_finite_mean() -> None:
    scores = normalized_scores(np.array([1.0, 3.0, math.nan]))
    np.testing.assert_allclose(scores[:2], [0.5, 1.5])
    assert math.isnan(scores[2])


@pytest.mark.parametrize("scale", [1e-40, 1e-44, 3e-45])
def test_dormant_scores_of_denormal_activations_match_float64(scale: float) -> None:
    """Issue 26.5: float32 denormal |a| and |g| (random-init MobileViT, EfficientNet) read 100 %.

    The float32 values are the data; the float64 brute force on the same values is the truth,
    per neuron (a score whose mean is 1 cannot put every neuron at or under τ).
    """
    g = torch.Generator().manual_seed(0)
    neuron_scale = torch.tensor([1.0, 1.0, 2.0, 4.0, 0.01, 0.01, 3.0, 1.0])
    x64 = torch.rand(512, 8, generator=g, dtype=torch.float64) * neuron_scale * scale
    x = x64.to(torch.float32)  # denormal float32: most entries are a handful of ulps
    assert 0 < float(x.abs().max()) < torch.finfo(torch.float32).tiny
    config = ScanConfig(tau=0.1)
    stats = SiteStats(8, x.device, torch.float32, config)
    stats.observe_forward(x, x.relu(), derivatives.relu, (0,))
    stats.observe_grad(x, (0,))
    (summary,) = summarize_sites([stats], [None])
    truth = x.to(torch.float64).abs().mean(0)
    expected = truth / truth.mean()
    for name in ("dormant_score", "grad_score"):
        torch.testing.assert_close(
            summary.neurons[name].to(torch.float64), expected, rtol=1e-6, atol=0, msg=name
        )
    pct = 100.0 * float((expected <= 0.1).double().mean())
    assert summary.row["dormant_pct"] == pytest.approx(pct)
    assert summary.row["grad_dormant_pct"] == pytest.approx(pct)
    assert pct < 100.0


def test_reduction_dims() -> None:
    assert reduction_dims(2, 1) == (0,)
    assert reduction_dims(4, 1) == (0, 2, 3)
    assert reduction_dims(3, -1) == (0, 1)
    assert reduction_dims(0, 0) == ()


def test_states_merge_with_their_declared_reduction() -> None:
    specs = [StateSpec("hi", "max"), StateSpec("lo", "min"), StateSpec("n", "sum", count=True)]
    a = StateStore(specs, 3, torch.device("cpu"), torch.float32)
    b = StateStore(specs, 3, torch.device("cpu"), torch.float32)
    a.fold("hi", torch.tensor([1.0, 0.0, 2.0]))
    b.fold("hi", torch.tensor([0.0, 3.0, 1.0]))
    a.fold("lo", torch.tensor([1.0, 0.0, 2.0]))
    b.fold("lo", torch.tensor([0.0, 3.0, 1.0]))
    a.fold("n", 4)  # a host int: pending until read
    b.fold("n", torch.tensor([1.0, 2.0, 3.0]))
    a.merge(b)
    assert a["hi"].tolist() == [1.0, 3.0, 2.0]
    assert a["lo"].tolist() == [0.0, 0.0, 1.0]
    assert a["n"].tolist() == [5.0, 6.0, 7.0]


def test_a_state_declared_twice_differently_is_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        StateStore(
            [StateSpec("x", "sum"), StateSpec("x", "max")], 2, torch.device("cpu"), torch.float32
        )


def test_registry_refuses_silent_overrides_and_column_clashes() -> None:
    registry = StatisticRegistry()
    dead = STATISTICS["dead"]
    registry.register(dead)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(dead)

    class Clash(Statistic):
        name = "clash"
        columns = (Column("dead_pct", "float64", "percent", "the same column again"),)

    with pytest.raises(ValueError, match="already taken"):
        registry.register(Clash)
    with pytest.raises(KeyError, match="known: dead"):
        registry["nope"]


def test_report_columns_are_the_declared_ones_in_order() -> None:
    declared = [c.name for c in STATISTICS.columns()]
    identity = ["site", "activation", "class", "kind", "role", "neurons", "feature_dim"]
    assert list(COLUMNS) == [*identity, *declared]
    assert "inactive_pct" in COLUMNS


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    splits=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    step=st.booleans(),
)
def test_streaming_equals_one_shot(shape: list[int], splits: int, seed: int, step: bool) -> None:
    """Accumulating call by call (and merging partial statistics) equals all-at-once."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([splits * shape[0], *shape[1:]], generator=g, dtype=torch.float64)
    dims = reduction_dims(x.dim(), 1)
    config = ScanConfig()
    whole = SiteStats(shape[1], x.device, torch.float64, config)
    whole.observe_forward(x, x.relu(), derivatives.relu, dims, step)
    parts = [whole.fresh() for _ in range(splits)]
    for part, chunk in zip(parts, x.chunk(splits), strict=True):
        part.observe_forward(chunk, chunk.relu(), derivatives.relu, dims, step)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    a, b = summarize_sites([whole, merged], [None, None])
    for key in ("dead_pct", "dormant_pct", "min_abs_deriv", "inactive_pct"):
        assert a.row[key] == pytest.approx(b.row[key], nan_ok=True)
    for name, tensor in a.neurons.items():
        torch.testing.assert_close(tensor, b.neurons[name], equal_nan=True, msg=name)


def test_a_neuron_that_saw_only_nonfinite_values_is_not_dead() -> None:
    stats = SiteStats(2, torch.device("cpu"), torch.float64, ScanConfig())
    z = torch.tensor([[math.nan, -1.0], [math.nan, -2.0]], dtype=torch.float64)
    stats.observe_forward(z, torch.relu(z), derivatives.relu, (0,), step=True)
    (summary,) = summarize_sites([stats], [None])
    assert summary.neurons["dead"].tolist() == [False, True]
    assert summary.neurons["finite_positions"].tolist() == [0, 2]
    assert summary.row["dead_pct"] == 100.0  # of the neurons that saw a finite value
    assert summary.row["nonfinite"] == 2
    assert math.isnan(float(summary.neurons["mean_abs_activation"][0]))


def test_scan_config_validates() -> None:
    with pytest.raises(NeurodiagError, match="dead window"):
        ScanConfig(dead_window="epoch")
    with pytest.raises(NeurodiagError, match="eps"):
        ScanConfig(eps=-1)
    with pytest.raises(NeurodiagError, match="unknown scan option"):
        ScanConfig().with_options(epsilon=1)


def test_a_copied_store_folds_into_its_own_states() -> None:
    """Every reduction of a deep-copied store writes into the copy (a sum's bound ``add_`` is
    a builtin method, which ``copy.deepcopy`` shares: its fold must be bound again)."""
    import copy

    specs = [StateSpec("s", "sum"), StateSpec("hi", "max"), StateSpec("lo", "min")]
    for folded_before in (False, True):  # folds are bound when first used: before or after
        store = StateStore(specs, 3, torch.device("cpu"), torch.float32)
        if folded_before:
            for name in ("s", "hi", "lo"):
                store.fold(name, torch.zeros(3))
        before = {name: store[name].clone() for name in ("s", "hi", "lo")}
        twin = copy.deepcopy(store)
        value = torch.tensor([1.0, -2.0, 3.0])
        for name in ("s", "hi", "lo"):
            twin.fold(name, value)
            expected = torch.maximum(value, before[name]) if name == "hi" else value
            expected = torch.minimum(value, before[name]) if name == "lo" else expected
            assert torch.equal(twin[name], expected), (name, folded_before)
            assert torch.equal(store[name], before[name]), (name, folded_before)


def test_the_sites_of_a_scan_share_one_layout() -> None:
    """One ``StatisticsLayout`` per scan: its sites (and a Monitor's next windows) share the
    statistics objects instead of building them per site; a site of another config gets its own."""
    from neurodiag.scan import sink_factory

    config = ScanConfig()
    make = sink_factory(config)
    a = make(4, torch.device("cpu"), torch.float32)
    b = make(8, torch.device("cpu"), torch.float64)
    assert a.layout is b.layout and a.statistics is b.statistics
    assert a.fresh().layout is a.layout
    other = ScanConfig(tau=0.5)
    c = SiteStats(4, torch.device("cpu"), torch.float32, other, layout=a.layout)
    assert c.layout is not a.layout and all(stat.config is other for stat in c.statistics)
