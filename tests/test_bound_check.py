"""The δ̄ check can fail: σ' is the slope of what forward computes, never clamped.

A Bernstein layer whose increments break the monotone parameterisation (one negative entry)
must read ``bound_ok`` False with min |σ'| equal to its real slope, measured here by finite
differences of its forward; a healthy layer must read True in float32 on every kernel.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import neurodiag
from neurodiag.activations.bernstein import Bernstein
from neurodiag.stats.bernstein_bound import REL_TOL

F64 = torch.float64


class BrokenBernstein(Bernstein):
    """The first two increments set to 0.002 and −0.005 (below δ = 0.01, one negative): the
    forward's slope dips below δ̄ near the lower end (as in issue 24)."""

    @property
    def increments(self) -> Tensor:
        incs = super().increments
        broken = torch.zeros_like(incs)
        broken[:, 0] = 0.002 - incs[:, 0].detach()
        broken[:, 1] = -0.005 - incs[:, 1].detach()
        return incs + broken


def _broken() -> BrokenBernstein:
    m = BrokenBernstein(9, 0.01, -5.0, 5.0)  # δ̄ = 9·0.01/10 = 0.009
    m.init_critical()
    return m


def _fd_min_slope(m: nn.Module, lo: float, hi: float) -> float:
    """min of the central finite-difference slope of m's forward on a dense float64 grid."""
    x = torch.linspace(lo, hi, 20_001, dtype=F64)
    h = 1e-4
    with torch.no_grad():
        m64 = m.double()
        slope = (m64(x + h) - m64(x - h)) / (2 * h)
        m.float()
    return float(slope.min())


def test_broken_parameterisation_dips_below_delta_bar() -> None:
    m = _broken()
    true_min = _fd_min_slope(m, -5.0, 5.0)
    assert 0 < true_min < 0.5 * m.delta_bar, (true_min, m.delta_bar)


def test_scan_reads_the_broken_bound_false_with_its_true_slope() -> None:
    m = _broken()
    true_min = _fd_min_slope(m, -5.0, 5.0)
    model = nn.Sequential(m)
    batches = [(torch.linspace(-5.0, 5.0, 4001).unsqueeze(1), torch.zeros(4001, 1))]
    report = neurodiag.scan(model, batches, loss_fn=lambda out, batch: out.square().mean())
    (row,) = report.rows
    assert row["delta_bar"] == pytest.approx(0.009)
    assert row["bound_ok"] is False
    assert row["min_abs_deriv"] == pytest.approx(true_min, rel=0.05)


@pytest.mark.parametrize("native", [True, False])
def test_backward_is_the_slope_of_forward_not_a_clamp(native: bool) -> None:
    m = _broken()
    m.native_kernel = native
    x = torch.linspace(-6.0, 6.0, 2001).unsqueeze(1).requires_grad_(True)
    (grad,) = torch.autograd.grad(m(x).sum(), x)
    true_min = _fd_min_slope(m, -6.0, 6.0)
    assert float(grad.min()) == pytest.approx(true_min, rel=0.05)
    assert float(grad.min()) < m.delta_bar


def test_a_redefined_forward_is_measured_by_autograd_of_that_forward() -> None:
    class Flattened(Bernstein):
        def forward(self, x: Tensor) -> Tensor:
            return 0.05 * super().forward(x)

    m = Flattened(9, 0.01, -5.0, 5.0)
    m.init_critical()
    batches = [(torch.linspace(-5.0, 5.0, 2001).unsqueeze(1), torch.zeros(2001, 1))]
    report = neurodiag.scan(
        nn.Sequential(m), batches, loss_fn=lambda out, batch: out.square().mean()
    )
    (row,) = report.rows
    assert row["min_abs_deriv"] == pytest.approx(_fd_min_slope(m, -5.0, 5.0), rel=0.05)
    # init_critical's min slope is ~10·δ̄ here: a twentieth of it is ~δ̄/2
    assert row["bound_ok"] is False


@pytest.mark.parametrize("degree", [9, 15, 16])
@pytest.mark.parametrize("native", [True, False])
def test_healthy_float32_layers_keep_the_bound_as_measured(degree: int, native: bool) -> None:
    """Extreme but valid coefficients: some increments at δ, others large. The measured slope
    (float64 table) keeps δ̄ within REL_TOL; the float32 training slope within 3e-3 of it."""
    gen = torch.Generator().manual_seed(degree)
    m = Bernstein(degree, 0.01, -3.0, 3.0, num_features=64)
    m.native_kernel = native
    with torch.no_grad():
        scale = torch.tensor([0.5, 3.0, 10.0]).repeat(22)[:64, None]
        m.theta.copy_(torch.randn(m.theta.shape, generator=gen) * scale - scale)
        m.c0.copy_(torch.randn(m.c0.shape, generator=gen))
    x = torch.linspace(-4.0, 4.0, 4001).unsqueeze(1).expand(-1, 64).contiguous()
    measured = m.derivative(x)
    assert measured.dtype == torch.float32
    assert float(measured.min()) >= m.delta_bar * (1 - REL_TOL)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m(xg).sum(), xg)
    assert float(grad.min()) >= m.delta_bar * (1 - 3e-3)
    assert torch.allclose(grad, measured, rtol=0, atol=3e-3 * float(measured.abs().max()))
