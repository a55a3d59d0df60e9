"""Statistic math and accumulator merging, against brute force on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neurodiag.stats import functional as fn
from neurodiag.stats.accumulators import DerivativeMax, GradientMagnitude
from neurodiag.stats.observation import ForwardObservation, reduction_dims
from neurodiag.stats.site_stats import SiteStats, StatOptions


def test_dead_mask_is_max_below_eps() -> None:
    d = torch.tensor([[0.0, 0.5, 1e-4], [0.0, 0.0, 2e-3]])
    assert fn.dead_mask(d.amax(0), 1e-3).tolist() == [True, False, False]


def test_normalized_scores_brute_force() -> None:
    m = torch.tensor([0.0, 1.0, 2.0, 5.0])
    torch.testing.assert_close(fn.normalized_scores(m), m / m.mean())
    assert fn.dormant_percent(fn.normalized_scores(m), 0.5) == 50.0  # 0.0 and 0.5 (≤ τ)


def test_normalized_scores_all_zero_are_all_dormant() -> None:
    scores = fn.normalized_scores(torch.zeros(3))
    assert fn.dormant_percent(scores, 0.0) == 100.0


def test_normalized_scores_ignore_nonfinite_neurons() -> None:
    scores = fn.normalized_scores(torch.tensor([1.0, 3.0, math.nan]))
    torch.testing.assert_close(scores[:2], torch.tensor([0.5, 1.5]))
    assert math.isnan(scores[2])
    assert fn.dormant_percent(scores, 10.0) == pytest.approx(200 / 3)


def test_mag_brute_force() -> None:
    g = torch.randn(7, 3)
    sums = g.abs().sum(0)
    assert fn.mean_abs_gradient(sums, torch.tensor(7)) == pytest.approx(float(g.abs().mean()))
    assert math.isnan(fn.mean_abs_gradient(sums, torch.tensor(0)))


def test_reduction_dims() -> None:
    assert reduction_dims(2, 1) == (0,)
    assert reduction_dims(4, 1) == (0, 2, 3)
    assert reduction_dims(3, -1) == (0, 1)
    assert reduction_dims(0, 0) == ()


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    splits=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_streaming_equals_one_shot(shape: list[int], splits: int, seed: int) -> None:
    """Accumulating batch by batch (and merging partial accumulators) equals all-at-once."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([splits * shape[0], *shape[1:]], generator=g, dtype=torch.float64)
    dims = reduction_dims(x.dim(), 1)
    options = StatOptions()

    def deriv(z: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
        assert z is not None
        return (z > 0).double() * z

    whole = SiteStats(shape[1], x.device, torch.float64, options)
    whole.observe(ForwardObservation(x, x.relu(), deriv, dims))
    parts = [SiteStats(shape[1], x.device, torch.float64, options) for _ in range(splits)]
    for part, chunk in zip(parts, x.chunk(splits)):
        part.observe(ForwardObservation(chunk, chunk.relu(), deriv, dims))
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    a, b = whole.summarize(None), merged.summarize(None)
    for key in ("dead_pct", "dormant_pct", "min_abs_deriv"):
        assert a.row[key] == pytest.approx(b.row[key], nan_ok=True)
    torch.testing.assert_close(a.neurons["mean_abs_activation"], b.neurons["mean_abs_activation"])


def test_state_reductions_are_declared() -> None:
    acc = DerivativeMax(3, torch.device("cpu"), torch.float32)
    other = DerivativeMax(3, torch.device("cpu"), torch.float32)
    acc.max_abs_deriv = torch.tensor([1.0, 0.0, 2.0])
    other.max_abs_deriv = torch.tensor([0.0, 3.0, 1.0])
    acc.merge(other)
    assert acc.max_abs_deriv.tolist() == [1.0, 3.0, 2.0]
    grad = GradientMagnitude(2, torch.device("cpu"), torch.float32)
    assert dict(zip(grad.state_names, ("sum", "sum"))) == {
        name: grad._reductions[name] for name in grad.state_names
    }


def test_stat_options_validate() -> None:
    with pytest.raises(ValueError, match="dead window"):
        StatOptions(dead_window="epoch")
    with pytest.raises(ValueError, match="eps"):
        StatOptions(eps=-1)
