"""Tests for the monotone Bernstein activation (neurodiag.activations.bernstein).

Run this file as a script to print forward+backward timings against GELU (not a test).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from neurodiag.activations import bernstein, bernstein_reference
from neurodiag.activations.bernstein import Bernstein

F64 = torch.float64


def _randomise(m: Bernstein, seed: int = 0, scale: float = 1.0) -> Bernstein:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.c0.copy_(torch.randn(m.c0.shape, generator=gen, dtype=m.c0.dtype) * scale)
        m.theta.copy_(torch.randn(m.theta.shape, generator=gen, dtype=m.theta.dtype) * scale)
    return m


def _coeffs_like(m: Bernstein, x: Tensor, k: int) -> Tensor:
    """Column k of the coefficients, shaped to broadcast against x along the feature dim."""
    c = m.coefficients.detach().to(F64)[:, k]
    if m.num_features is None:
        return c.reshape(())
    shape = [1] * x.ndim
    shape[0 if x.ndim == 1 else m.feature_dim] = -1
    return c.reshape(shape)


def brute_inside(m: Bernstein, x: Tensor) -> Tensor:
    """The defining sum Σ c_k C(n,k) (x−l)^k (u−x)^(n−k) / (u−l)^n, in float64."""
    n, lo, hi = m.degree, m.lower, m.upper
    total = torch.zeros_like(x, dtype=F64)
    for k in range(n + 1):
        basis = math.comb(n, k) * (x - lo) ** k * (hi - x) ** (n - k) / (hi - lo) ** n
        total = total + _coeffs_like(m, x, k) * basis
    return total


def brute_slope(m: Bernstein, x: Tensor) -> Tensor:
    """d/dx of the defining sum: n/(u−l) Σ (c_{k+1} − c_k) b_{n−1,k}(x), in float64."""
    n, lo, hi = m.degree, m.lower, m.upper
    total = torch.zeros_like(x, dtype=F64)
    for k in range(n):
        diff = _coeffs_like(m, x, k + 1) - _coeffs_like(m, x, k)
        basis = math.comb(n - 1, k) * (x - lo) ** k * (hi - x) ** (n - 1 - k) / (hi - lo) ** (n - 1)
        total = total + diff * basis
    return total * n / (hi - lo)


def brute(m: Bernstein, x: Tensor) -> Tensor:
    """Defining sum on [l, u], linear continuation with the boundary slope outside."""
    lo, hi = m.lower, m.upper
    xc = x.clamp(lo, hi)
    return brute_inside(m, xc) + (x - xc) * brute_slope(m, xc)


# (num_features, feature_dim, input shape): shared and per-neuron, 1-D to 4-D, sequences.
LAYOUTS = [
    (None, 1, (7, 5)),
    (5, 1, (7, 5)),
    (None, 1, (2, 3, 2, 3)),
    (3, 1, (2, 3, 2, 3)),
    (4, -1, (3, 5, 4)),
    (6, 1, (6,)),
]


@pytest.mark.parametrize(("num_features", "feature_dim", "shape"), LAYOUTS)
def test_value_matches_defining_sum_and_linear_extension(
    num_features: int | None, feature_dim: int, shape: tuple[int, ...]
) -> None:
    m = _randomise(Bernstein(7, 0.05, -2.0, 3.0, num_features, feature_dim).double())
    gen = torch.Generator().manual_seed(1)
    inside = torch.rand(shape, generator=gen, dtype=F64) * 5.0 - 2.0
    torch.testing.assert_close(m(inside), brute_inside(m, inside), rtol=1e-12, atol=1e-12)
    outside = torch.randn(shape, generator=gen, dtype=F64) * 20.0
    torch.testing.assert_close(m(outside), brute(m, outside), rtol=1e-12, atol=1e-10)
    assert bool(((outside < -2.0) | (outside > 3.0)).any())  # the extension was exercised


@pytest.mark.parametrize(("num_features", "feature_dim", "shape"), LAYOUTS)
def test_derivative_matches_autograd_and_formula(
    num_features: int | None, feature_dim: int, shape: tuple[int, ...]
) -> None:
    m = _randomise(Bernstein(9, 0.01, -5.0, 5.0, num_features, feature_dim).double(), seed=3)
    x = (
        torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(4)) * 8.0
    ).requires_grad_()
    (grad,) = torch.autograd.grad(m(x).sum(), x)
    d = m.derivative(x)
    assert d.shape == x.shape and d.dtype == F64 and not d.requires_grad
    torch.testing.assert_close(d, grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        d, brute_slope(m, x.detach().clamp(-5.0, 5.0)), rtol=1e-10, atol=1e-12
    )


def test_continuous_with_continuous_slope_at_both_ends() -> None:
    m = _randomise(Bernstein(9, num_features=4).double(), seed=5)
    for end in (m.lower, m.upper):
        eps = 1e-7
        x = torch.tensor([[end - eps] * 4, [end] * 4, [end + eps] * 4], dtype=F64)
        y = m(x)
        slope = m.derivative(x)
        # A jump would show up as a difference much larger than slope·eps.
        torch.testing.assert_close(y[0], y[1] - slope[1] * eps, rtol=0, atol=1e-12)
        torch.testing.assert_close(y[2], y[1] + slope[1] * eps, rtol=0, atol=1e-12)
        torch.testing.assert_close(slope[0], slope[2], rtol=1e-6, atol=0)


@pytest.mark.parametrize(("num_features", "feature_dim", "shape"), LAYOUTS)
def test_gradcheck_input_and_parameters(
    num_features: int | None, feature_dim: int, shape: tuple[int, ...]
) -> None:
    m = _randomise(Bernstein(5, 0.02, -1.5, 2.0, num_features, feature_dim).double(), seed=6)
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(shape, generator=gen, dtype=F64) * 2.0).requires_grad_()

    def run(x: Tensor, c0: Tensor, theta: Tensor) -> Tensor:
        out: Tensor = torch.func.functional_call(m, {"c0": c0, "theta": theta}, (x,))
        return out

    c0 = m.c0.detach().clone().requires_grad_()
    theta = m.theta.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(run, (x, c0, theta))


def test_gradcheck_only_parameters_and_only_input() -> None:
    m = _randomise(Bernstein(4, num_features=3).double(), seed=8)
    x = torch.randn(5, 3, dtype=F64) * 6.0
    assert torch.autograd.gradcheck(
        lambda c0, th: torch.func.functional_call(m, {"c0": c0, "theta": th}, (x,)),
        (m.c0.detach().clone().requires_grad_(), m.theta.detach().clone().requires_grad_()),
    )
    m.requires_grad_(False)
    xr = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(m, (xr,))


def _reference(m: Bernstein, x: Tensor) -> Tensor:
    """The same σ in plain autograd ops: the Bernstein basis sum on [l, u] (built per element),
    continued linearly with the boundary slopes n·(c_1 − c_0)/(u−l), n·(c_n − c_{n−1})/(u−l)."""
    n, lo, hi = m.degree, m.lower, m.upper
    c = m.coefficients.to(x.dtype)  # (F, n+1), differentiable in c0 and theta
    t = ((x - lo) / (hi - lo)).clamp(0.0, 1.0).unsqueeze(-1)
    k = torch.arange(n + 1, dtype=x.dtype)
    binom = torch.tensor([math.comb(n, j) for j in range(n + 1)], dtype=x.dtype)
    inside = (binom * t**k * (1.0 - t) ** (n - k) * c).sum(-1)
    slope_lo = n * (c[:, 1] - c[:, 0]) / (hi - lo)
    slope_hi = n * (c[:, n] - c[:, n - 1]) / (hi - lo)
    return inside + (x - lo).clamp(max=0.0) * slope_lo + (x - hi).clamp(min=0.0) * slope_hi


@pytest.mark.parametrize("num_features", [100, None])
@pytest.mark.parametrize("native_kernel", [True, False])
def test_custom_backward_matches_plain_autograd_at_realistic_sizes(
    num_features: int | None, native_kernel: bool
) -> None:
    """float32, a (256, 100) batch with about 1/4 of it outside [l, u]; gradients of x, c0 and
    theta against _reference, then again after 5 Adam steps on both copies (so a wrong gradient
    would also show up as diverging parameters). Tolerances: float32 sums of 25600 terms."""
    gen = torch.Generator().manual_seed(12)
    m = Bernstein(num_features=num_features)
    m.native_kernel = native_kernel  # the C op where it is built, else both are the reference
    ref = Bernstein(num_features=num_features)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(256, 100, generator=gen) * 4.0
    assert 0.15 < float((x.abs() > 5.0).float().mean()) < 0.35
    target = torch.randn(256, 100, generator=gen)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(6):
        xs = x.clone().requires_grad_()
        xr = x.clone().requires_grad_()
        loss = ((m(xs) - target) ** 2).mean()
        loss_ref = ((_reference(ref, xr) - target) ** 2).mean()
        got = torch.autograd.grad(loss, [xs, m.c0, m.theta])
        want = torch.autograd.grad(loss_ref, [xr, ref.c0, ref.theta])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
        for p, gp in zip((m.c0, m.theta), got[1:]):
            p.grad = gp
        for p, gp in zip((ref.c0, ref.theta), want[1:]):
            p.grad = gp
        opt.step()
        opt_ref.step()
    torch.testing.assert_close(m.theta, ref.theta, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.c0, ref.c0, rtol=1e-4, atol=1e-5)


def _mean_square_slope_x2(m: Bernstein, scale: float, centre: float = 0.0) -> float:
    """2·E[σ'(z)²] for z ~ N(centre, scale²): the factor by which a He-initialised layer
    (weight variance 2/fan_in) multiplies the squared gradient in mean-field theory (1 for
    ReLU at every scale)."""
    z = torch.randn(100_000, 1, dtype=F64, generator=torch.Generator().manual_seed(15))
    z = z.expand(-1, m.num_features or 1)
    return 2.0 * float(m.derivative(z * scale + centre).square().mean())


SCALES = (0.05, 0.2, 0.5, 1.0, 1.5, 3.0, 10.0, 40.0)


@pytest.mark.parametrize(
    ("degree", "lower", "upper"), [(9, -5.0, 5.0), (9, -3.0, 3.0), (15, -5.0, 5.0), (3, -1.0, 4.0)]
)
def test_critical_init_passes_gradients_like_relu_at_every_scale(
    degree: int, lower: float, upper: float
) -> None:
    """The regression behind a 50-layer ReLU MLP swapped to bern9 collapsing to a constant
    output: the ReLU fit gives 2·E[σ'(z)²] ≈ 0.57 at z ~ N(0, 1) and 0.35 at small scales
    (defaults), so the squared gradient shrinks at every layer. init_critical keeps it within
    0.9-1.1 at every scale (measured 0.92-1.08 for degrees 2-25), centred on the middle of
    [l, u]; the scales go from 2.5% to 20× the half-range."""
    centre = 0.5 * (lower + upper)
    half = 0.5 * (upper - lower)
    if centre == 0.0:  # ReLU itself gives exactly 1 here, at every scale; its fit does not
        fit = Bernstein(degree, 0.01, lower, upper).double()
        assert min(_mean_square_slope_x2(fit, s * half) for s in SCALES) < 0.6
    m = Bernstein(degree, 0.01, lower, upper, num_features=2).double()
    assert m.init_critical() is m
    for s in SCALES:
        assert 0.9 <= _mean_square_slope_x2(m, s * half, centre) <= 1.1, s
    x = torch.tensor([[centre] * 2], dtype=F64)
    torch.testing.assert_close(m(x), torch.zeros_like(x), rtol=0, atol=0.01 * half)  # fit error
    torch.testing.assert_close(m.derivative(x), torch.full_like(x, 0.5**0.5), rtol=0, atol=0.01)
    c = m.coefficients.detach()
    assert bool((c.diff(dim=1) >= m.delta).all())  # still monotone with the δ margin
    torch.testing.assert_close(c[0], c[1])


def test_critical_init_of_degree_one_is_the_critical_line() -> None:
    m = Bernstein(1, 0.01, -2.0, 4.0).double().init_critical()
    x = torch.linspace(-10.0, 10.0, 41, dtype=F64)
    torch.testing.assert_close(m(x).detach(), (x - 1.0) / 2**0.5, rtol=0, atol=1e-9)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    degree=st.integers(1, 15),
    delta=st.floats(1e-4, 1.0),
    lower=st.floats(-100.0, 100.0),
    width=st.floats(1e-2, 200.0),
    c0=st.floats(-1e3, 1e3),
    theta=st.lists(st.floats(-60.0, 20.0), min_size=15, max_size=15),
    xs=st.lists(st.one_of(st.floats(-1e6, 1e6), st.floats(-2.0, 2.0)), min_size=1, max_size=12),
)
def test_slope_never_below_delta_bar(
    degree: int,
    delta: float,
    lower: float,
    width: float,
    c0: float,
    theta: list[float],
    xs: list[float],
) -> None:
    upper = lower + width
    m = Bernstein(degree, delta, lower, upper, num_features=2).double()
    with torch.no_grad():
        m.c0.copy_(torch.tensor([c0, -c0]))
        m.theta.copy_(torch.tensor([theta[:degree], theta[::-1][:degree]], dtype=F64))
    assert m.delta_bar == degree * delta / (upper - lower)
    assert bool((m.coefficients.diff(dim=1) >= delta * (1 - 1e-9) - 1e-9 * abs(c0)).all())
    # Points far outside, inside, and exactly at the ends, in both columns (features).
    col = torch.tensor([*xs, lower, upper, lower + 0.5 * width], dtype=F64)
    x = torch.stack([col, col.flip(0)], dim=1)
    d = m.derivative(x)
    assert bool((d >= m.delta_bar * (1 - 1e-6) - 1e-300).all()), (d.min().item(), m.delta_bar)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(m(x).sum(), x)
    assert bool((grad >= m.delta_bar * (1 - 1e-6)).all())


def _on_grid(m: Bernstein, x: Tensor) -> Tensor:
    """σ on a 1-D grid, for every neuron: shape (len(x), F)."""
    width = m.num_features or 1
    out: Tensor = m(x.unsqueeze(1).expand(-1, width))
    return out


def _max_error(m: Bernstein, fn: object) -> float:
    x = torch.linspace(m.lower, m.upper, 10_001, dtype=F64)
    return float((_on_grid(m, x).detach() - fn(x).unsqueeze(1)).abs().max())  # type: ignore[operator]


def _bernstein_operator_mse(m: Bernstein, fn: object) -> float:
    """L2 error of the classic Bernstein operator c_k = fn(node_k), made feasible.

    Increments are raised to δ(1 + 1e-3) and c_0 shifted to zero mean error: a feasible point of
    init_from's least-squares problem, so init_from must do at least as well.
    """
    n = m.degree
    nodes = torch.linspace(m.lower, m.upper, n + 1, dtype=F64)
    c = fn(nodes)  # type: ignore[operator]
    inc = c.diff().clamp(min=m.delta * (1 + 1e-3))
    ref = Bernstein(n, m.delta, m.lower, m.upper).double()
    with torch.no_grad():
        ref.theta.copy_(torch.log(torch.expm1(inc - m.delta)).unsqueeze(0))
        grid = torch.linspace(m.lower, m.upper, 2001, dtype=F64)
        ref.c0.zero_()
        ref.c0.add_((fn(grid) - ref(grid)).mean())  # type: ignore[operator]
        return float(((ref(grid) - fn(grid)) ** 2).mean())  # type: ignore[operator]


@pytest.mark.parametrize(
    ("fn", "bound"),
    [
        # The kink costs most: the Bernstein operator's error there is about
        # (u−l)/(2·sqrt(2πn)) = 0.66 for n = 9 on [−5, 5] (measured 0.68); the monotone
        # least-squares fit reaches 0.35. GELU is smoother: 0.28 (operator: 0.58).
        (torch.relu, 0.36),
        (F.gelu, 0.29),
    ],
)
def test_init_from_fits_and_stays_monotone(fn: object, bound: float) -> None:
    m = Bernstein(num_features=3).double()
    assert m.init_from(fn) is m  # type: ignore[arg-type]
    assert _max_error(m, fn) <= bound
    grid = torch.linspace(m.lower, m.upper, 2001, dtype=F64)
    mse = float(((_on_grid(m, grid)[:, 0].detach() - fn(grid)) ** 2).mean())  # type: ignore[operator]
    assert mse <= _bernstein_operator_mse(m, fn) + 1e-12
    c = m.coefficients.detach()
    assert bool((c.diff(dim=1) >= m.delta).all())
    torch.testing.assert_close(c[0], c[2])  # every neuron gets the same fit


def test_init_from_identity_is_exact_and_new_modules_start_as_relu_fit() -> None:
    m = Bernstein(5, 0.01, -2.0, 2.0).double().init_from(lambda x: 0.7 * x + 1.0)
    x = torch.linspace(-4, 4, 101, dtype=F64)  # includes the linear extension
    torch.testing.assert_close(m(x), 0.7 * x + 1.0, rtol=0, atol=1e-9)
    fresh = Bernstein().double()
    assert _max_error(fresh, torch.relu) <= 0.36
    with pytest.raises(ValueError, match="finite"):
        Bernstein().init_from(lambda x: x / 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_agrees_with_float64(dtype: torch.dtype) -> None:
    m = _randomise(Bernstein(9, num_features=6), seed=9, scale=0.5)
    x = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(10)) * 4.0
    xd = x.to(dtype).requires_grad_()
    y = m(xd)
    assert y.dtype == dtype
    # Inputs are rounded to dtype first; compare on the rounded inputs.
    ref = _randomise(Bernstein(9, num_features=6), seed=9, scale=0.5).double()(xd.detach().double())
    # Computed in float32 either way; bf16 only rounds the result (relative 2^-9).
    rtol = {torch.float32: 1e-5, torch.bfloat16: 2.0**-8}[dtype]
    torch.testing.assert_close(y.double(), ref, rtol=rtol, atol=1e-5)
    y.backward(torch.ones_like(y))
    assert xd.grad is not None and xd.grad.dtype == dtype
    assert m.theta.grad is not None and m.theta.grad.dtype == torch.float32
    d = m.derivative(xd.detach())
    assert d.dtype == torch.float32  # not rounded to bf16: keeps σ' ≥ δ̄ visible
    assert bool((d >= m.delta_bar * (1 - 1e-6)).all())


def test_bf16_parameters_keep_the_bound() -> None:
    m = Bernstein(9, delta=0.011, num_features=4).to(torch.bfloat16)  # as swap_activations does
    m.init_from(torch.relu)
    x = torch.linspace(-20, 20, 4001).unsqueeze(1).expand(-1, 4).to(torch.bfloat16)
    assert m(x).dtype == torch.bfloat16
    assert m.increments.dtype == torch.float32
    assert bool((m.derivative(x) >= m.delta_bar * (1 - 1e-6)).all())


def test_float32_bound_holds_for_relu_init_far_out() -> None:
    m = Bernstein(9, num_features=8)
    x = torch.cat([torch.linspace(-1e4, 1e4, 2001), torch.linspace(-6, 6, 4001)])
    x = x.unsqueeze(1).expand(-1, 8).contiguous()
    d = m.derivative(x)
    # the tolerance neurodiag's report uses for float32
    assert bool((d >= m.delta_bar * (1 - 1e-5) - 1e-7).all())


def test_saves_nothing_larger_than_the_input() -> None:
    m = Bernstein(9, num_features=16)
    x = torch.randn(64, 16, 8, 8, requires_grad=True)
    sizes: list[int] = []

    def pack(t: Tensor) -> Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    assert sizes, "nothing was saved at all"
    assert max(sizes) <= x.numel()
    assert sum(s == x.numel() for s in sizes) == 1  # x itself, and no full-size intermediate
    y.sum().backward()
    assert x.grad is not None and m.theta.grad is not None


def test_backward_reuses_the_coefficient_table_of_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The op builds the (2n+3, F) table once, in forward; backward reuses it (saved beside the
    inputs, see test_saves_nothing_larger_than_the_input), never once per chunk or element."""
    calls: list[int] = []
    original = bernstein_reference.coefficient_table

    def counting(*args: object) -> Tensor:
        calls.append(1)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bernstein_reference, "coefficient_table", counting)
    m = _randomise(Bernstein(9, num_features=5).double(), seed=13)
    x = torch.randn(6, 5, dtype=F64, requires_grad=True)
    m(x).sum().backward()
    assert len(calls) == 1
    assert x.grad is not None and m.theta.grad is not None


def test_torch_func_grad_matches_autograd() -> None:
    """torch.func transforms run the reference with plain autograd (the op's autograd.Function
    does not support them): the same gradient as the op's hand-written backward."""
    m = _randomise(Bernstein(9, num_features=4).double(), seed=14)
    x = torch.randn(3, 4, dtype=F64) * 6.0
    got = torch.func.grad(lambda v: m(v).sum())(x)
    xr = x.clone().requires_grad_()
    m(xr).sum().backward()
    assert xr.grad is not None
    torch.testing.assert_close(got, xr.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("native_kernel", [True, False])
@pytest.mark.parametrize("shape", [(0, 3), (2, 3, 0)])
def test_empty_inputs(native_kernel: bool, shape: tuple[int, ...]) -> None:
    m = Bernstein(num_features=3)
    m.native_kernel = native_kernel
    x = torch.randn(shape, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert m.theta.grad is not None and bool((m.theta.grad == 0).all())


@pytest.mark.parametrize("lower_slope_smaller", [True, False])
def test_non_finite_inputs_agree_across_paths(lower_slope_smaller: bool) -> None:
    """NaN and ±Inf inputs give the same values and gradients (NaN where NaN) through the eager
    module (the neurodiag::bernstein op, hand-written backward) and through the reference with
    plain autograd (what torch.compile, compiled_kernel and torch.func run)."""
    m = _randomise(Bernstein(9, num_features=4).double(), seed=15)
    with torch.no_grad():  # first increment smaller or larger than the last
        m.theta[:, 0] = -3.0 if lower_slope_smaller else 3.0
        m.theta[:, -1] = 3.0 if lower_slope_smaller else -3.0
    x = torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(16)) * 8.0
    x[0, 0], x[1, 1], x[2, 2], x[3, 3] = math.nan, math.inf, -math.inf, 1e308
    g = torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(17))
    g[4, 0] = 0.0
    results = []
    scale, shift = bernstein_reference.scale_shift(m.lower, m.upper)

    def plain(v: Tensor) -> Tensor:
        out: Tensor = bernstein._forward(
            v, m.c0, m.increments, m._conversion(), scale, shift, m.feature_dim
        )
        return out

    for run in (m, plain):
        xr = x.clone().requires_grad_()
        y = run(xr)
        gx, gc0, gth = torch.autograd.grad(y, [xr, m.c0, m.theta], g)
        results.append((y.detach(), gx, gc0, gth))
    y, gx, gc0, gth = results[0]
    assert bool(y[0, 0].isnan()) and float(y[1, 1]) == math.inf and float(y[2, 2]) == -math.inf
    assert bool(gx.isfinite()[1:].all())  # σ' is the boundary slope at ±Inf
    assert bool(gc0.isfinite().all())
    # NaN only in the NaN input's feature; ±Inf in the boundary-slope entry of the ±Inf inputs'
    # features (and of 1e308's: g·n·1e307 may overflow), finite elsewhere.
    assert gth.isnan().any(dim=1).tolist() == [True, False, False, False]
    assert bool(gth[1:, 1:-1].isfinite().all() and gth[1, 0].isfinite() and gth[2, -1].isfinite())
    assert bool(gth[1, -1].isinf() and gth[2, 0].isinf())
    plain_gx = results[1][1]
    assert float(plain_gx[0, 0]) == 0.0  # autograd of clamp: 0, not NaN, at the NaN input
    plain_gx[0, 0] = math.nan
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_compiled_module_matches_eager() -> None:
    """Under torch.compile the reference runs (fused by Inductor); same values and grads,
    also for ±Inf and huge inputs (one per feature, so that each gives its own ±Inf or huge
    boundary-slope entry of the θ gradient)."""
    eager = _randomise(Bernstein(9, num_features=5), seed=18)
    compiled = _randomise(Bernstein(9, num_features=5), seed=18)
    compiled.compile()
    x = torch.randn(8, 5, 3, generator=torch.Generator().manual_seed(19)) * 4.0
    x[0, 0, 0], x[1, 1, 1], x[2, 2, 2], x[3, 3, 0] = -math.inf, math.inf, -1e30, 1e30
    g = torch.randn(8, 5, 3, generator=torch.Generator().manual_seed(20))
    grads = []
    for m in (eager, compiled):
        xr = x.clone().requires_grad_()
        y = m(xr)
        grads.append((y.detach(), *torch.autograd.grad(y, [xr, m.c0, m.theta], g)))
    y = grads[0][0]
    assert float(y[0, 0, 0]) == -math.inf and float(y[1, 1, 1]) == math.inf
    for a, b in zip(*grads):
        assert not bool(a.isnan().any())
        scale = float(a[a.abs() < 1e6].abs().max())  # huge entries: rtol
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_compiled_kernels_match_the_definition_and_are_shared_across_layers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compiled_kernel: values and gradients equal the eager kernels (and the defining sum);
    two layers of one shape but different ranges and δ use one compilation of each kernel."""
    monkeypatch.setattr(bernstein, "_COMPILED", bernstein._Compiled())
    torch._dynamo.reset()
    layers = [
        _randomise(Bernstein(9, num_features=5), seed=31),
        _randomise(Bernstein(9, delta=0.05, lower=-2.0, upper=3.0, num_features=5), seed=32),
    ]
    x = torch.randn(8, 5, 3, generator=torch.Generator().manual_seed(33)) * 4.0
    x[0, 0, 0], x[1, 1, 1] = -math.inf, 1e30
    g = torch.randn(8, 5, 3, generator=torch.Generator().manual_seed(34))
    graphs = torch._dynamo.utils.counters["stats"]
    compiles = [graphs["unique_graphs"]]
    for m in layers:
        results = []
        for compiled in (False, True):
            m.compiled_kernel = compiled
            xr = x.clone().requires_grad_()
            y = m(xr)
            results.append((y.detach(), *torch.autograd.grad(y, [xr, m.c0, m.theta], g)))
        compiles.append(graphs["unique_graphs"])
        finite = x.abs() < 1e6
        torch.testing.assert_close(
            results[1][0][finite].to(F64), brute(m, x.to(F64))[finite], rtol=1e-5, atol=1e-5
        )
        for a, b in zip(*results):
            scale = float(a[a.abs() < 1e6].abs().max())
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * scale)
    assert bernstein._COMPILED.failed is None
    # the forward (its backward with it) compiled for the first layer, reused by the second
    assert [compiles[1] - compiles[0], compiles[2] - compiles[1]] == [1, 0], compiles


def test_compiled_kernels_fall_back_to_eager_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compiler failure (no C++ compiler, say) warns once and the layer keeps working."""

    def broken(*_args: object, **_kwargs: object) -> object:
        def call(*_a: object) -> object:
            raise RuntimeError("no C++ compiler\nmore text")

        return call

    monkeypatch.setattr(bernstein, "_COMPILED", bernstein._Compiled())
    monkeypatch.setattr(torch, "compile", broken)
    m = _randomise(Bernstein(9, num_features=5), seed=35)
    m.native_kernel = False  # the fallback is the PyTorch eager kernels, bit for bit
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(36), requires_grad=True)
    expected = m(x)
    assert bernstein.use_compiled_kernels(torch.nn.Sequential(m, torch.nn.ReLU())) == 1
    with pytest.warns(RuntimeWarning, match=r"compile failed.*no C\+\+ compiler more text\)"):
        y = m(x)
    y.sum().backward()  # the backward kernel falls back silently: one warning in all
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert bernstein._COMPILED.failed == "RuntimeError: no C++ compiler more text"


def _brute_far(m: Bernstein, x: Tensor) -> Tensor:
    """σ outside [l, u] from the definition: c_0 + n·(c_1 − c_0)/(u−l)·(x − l) below l,
    c_n + n·(c_n − c_{n−1})/(u−l)·(x − u) above u, with the increments c_{k+1} − c_k used as
    they are, not as differences of larger coefficients (which would cancel huge terms in the
    value and in the gradients of c0 and θ). Differentiable in c0 and θ, also at ±∞; x is
    (N, F) with per-feature coefficients."""
    n, lo, hi = m.degree, m.lower, m.upper
    inc, c0 = m.increments.to(x.dtype), m.c0.to(x.dtype)
    # Each branch sees only its own side's inputs, so that no gradient is ever 0·∞.
    below = c0 + n * inc[:, 0] / (hi - lo) * (torch.where(x < lo, x, lo) - lo)
    above = c0 + inc.sum(dim=1) + n * inc[:, -1] / (hi - lo) * (torch.where(x > hi, x, hi) - hi)
    return torch.where(x < lo, below, above)


@pytest.mark.parametrize("lower_slope_smaller", [True, False])
def test_infinite_and_huge_inputs(lower_slope_smaller: bool) -> None:
    """σ(±∞) = ±∞, σ(NaN) = NaN, σ' at ±∞ is the boundary slope, and far outside [l, u] values
    and the gradients of x, c0 and θ keep full float64 precision, in every path.

    Regression: the extension was e·slope_hi + min(e, 0)·(slope_lo − slope_hi) (e the overshoot
    in t units), so σ(−∞) = −∞ + ∞ = NaN whenever slope_lo ≤ slope_hi (and ∂L/∂θ_{n−1} too),
    and far below l both the value and ∂L/∂θ_{n−1} were differences of two large terms. Here
    the boundary slopes are ~1e5 apart, either way round."""
    inf, nan = math.inf, math.nan
    lo, hi = -2.0, 3.0
    m = _randomise(Bernstein(9, 1e-4, lo, hi, num_features=5).double(), seed=21)
    with torch.no_grad():
        m.theta[:, 0] = -20.0 if lower_slope_smaller else 8.0
        m.theta[:, -1] = 8.0 if lower_slope_smaller else -20.0
    # Features (columns): −∞, +∞, huge on both sides, far below l next to a little above u
    # (where ∂L/∂θ_{n−1} was a difference of two huge sums), NaN.
    x = torch.tensor(
        [
            [-inf, inf, -1e30, -1e30, nan],
            [-1e300, 1e300, 1e30, 3.5, 0.5],
            [0.3, -1.0, -1e8, 0.0, 2.0],
            [4.0, -3.0, 1e8, 4.2, -2.5],
            [-2.5, 2.9, 1.0, -7.0, 7.0],
        ],
        dtype=F64,
    )
    g = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(22))
    g[0, :2] = 0.7  # fixes the sign of the infinite θ gradients below
    xr = x.clone().requires_grad_()
    y = m(xr)
    gx, gc0, gth = torch.autograd.grad(y, [xr, m.c0, m.theta], g)
    y = y.detach()

    assert float(y[0, 0]) == -inf and float(y[0, 1]) == inf and bool(y[0, 4].isnan())
    near = x.abs() <= 1e6
    far = x.abs() > 1e6  # including ±∞, not NaN
    with torch.no_grad():
        torch.testing.assert_close(y[far], _brute_far(m, x)[far], rtol=1e-12, atol=0)
        torch.testing.assert_close(y[near], brute(m, x)[near], rtol=1e-12, atol=1e-12)

    n, inc = m.degree, m.increments.detach()
    slope_lo, slope_hi = n * inc[:, 0] / (hi - lo), n * inc[:, -1] / (hi - lo)
    inside = brute_slope(m, x.clamp(lo, hi))  # NaN at NaN
    slope = torch.where(x <= lo, slope_lo, torch.where(x >= hi, slope_hi, inside))
    torch.testing.assert_close(gx, g * slope, rtol=1e-10, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(m.derivative(x), slope, rtol=1e-10, atol=1e-12, equal_nan=True)

    # c0 and θ against plain autograd: _reference for the inputs near [l, u], _brute_far for the
    # others. The features with −∞ and +∞ get ∂L/∂θ_0 = −∞ and ∂L/∂θ_{n−1} = +∞ (g > 0 there).
    want = torch.where(far, _brute_far(m, x), _reference(m, torch.where(near, x, 0.0)))
    want_c0, want_th = torch.autograd.grad(want, [m.c0, m.theta], g)
    assert float(want_th[0, 0]) == -inf and float(want_th[1, -1]) == inf
    torch.testing.assert_close(gc0[:4], want_c0[:4], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gth[:4], want_th[:4], rtol=1e-10, atol=1e-12)
    assert bool(gth[4].isnan().all())  # the NaN input's feature


def test_non_contiguous_inputs() -> None:
    m = _randomise(Bernstein(6, num_features=5).double(), seed=11)
    x = torch.randn(3, 5, 4, 6, dtype=F64).to(memory_format=torch.channels_last)
    torch.testing.assert_close(m(x), brute(m, x), rtol=1e-12, atol=1e-12)
    xt = torch.randn(5, 7, dtype=F64).t()  # (7, 5), transposed strides
    torch.testing.assert_close(m(xt), brute(m, xt), rtol=1e-12, atol=1e-12)
    xe = torch.randn(1, 5, 1, 1, dtype=F64).expand(3, 5, 4, 6)
    torch.testing.assert_close(m(xe), brute(m, xe), rtol=1e-12, atol=1e-12)


def test_argument_and_input_validation() -> None:
    with pytest.raises(ValueError, match="degree"):
        Bernstein(0)
    with pytest.raises(ValueError, match="delta"):
        Bernstein(delta=0.0)
    with pytest.raises(ValueError, match="lower < upper"):
        Bernstein(lower=1.0, upper=1.0)
    with pytest.raises(ValueError, match="num_features"):
        Bernstein(num_features=0)
    m = Bernstein(num_features=4)
    with pytest.raises(ValueError, match="expected 4 features"):
        m(torch.randn(2, 3))
    with pytest.raises(TypeError, match="floating"):
        m(torch.ones(2, 4, dtype=torch.long))
    shared = Bernstein()
    assert shared(torch.tensor(0.5)).shape == ()
    text = repr(Bernstein(7, 0.02, -3.0, 4.0, num_features=10, feature_dim=-1))
    for part in ("degree=7", "delta=0.02", "range=(-3.0, 4.0)", "num_features=10"):
        assert part in text
    assert Bernstein().delta_bar == pytest.approx(9 * 0.01 / 10)
    assert Bernstein().coefficients.shape == (1, 10)
    assert Bernstein(4, num_features=3).coefficients.shape == (3, 5)


def _bench() -> None:  # pragma: no cover - manual timing, `python tests/test_bernstein.py`
    """Median forward+backward time against F.gelu; interleaved because machines are shared.

    One thread is timed in process CPU time (robust to preemption), more threads in wall time.
    """
    import statistics
    import time

    def median_ms(fn: object, x: Tensor, g: Tensor, clock: object, reps: int) -> float:
        times: list[float] = []
        for i in range(reps + 2):
            t0 = clock()  # type: ignore[operator]
            fn(x).backward(g)  # type: ignore[operator]
            if i >= 2:
                times.append(clock() - t0)  # type: ignore[operator]
        return float(statistics.median(times)) * 1e3

    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        clock = time.process_time if threads == 1 else time.perf_counter
        for features, shape in ((100, (256, 100)), (128, (64, 128, 32, 32))):
            reps = 30 if len(shape) == 2 else 5
            x = torch.randn(*shape, requires_grad=True)
            g = torch.randn(*shape)
            m = Bernstein(9, num_features=features)
            bern, gelu = [], []
            for _ in range(3):
                bern.append(median_ms(m, x, g, clock, reps))
                gelu.append(median_ms(F.gelu, x, g, clock, reps))
            b, ge = statistics.median(bern), statistics.median(gelu)
            print(
                f"threads={threads} {shape}: gelu {ge:.2f} ms, bernstein {b:.2f} ms, x{b / ge:.1f}"
            )


if __name__ == "__main__":  # pragma: no cover
    _bench()


def test_initialisation_is_the_same_bits_in_every_process() -> None:
    """LAPACK's lstsq gave other last bits in another process (alignment-dependent BLAS), and a
    rerun of compare then trained to other numbers; the NNLS now solves in Python floats."""
    import subprocess
    import sys

    code = (
        "import hashlib, torch\n"
        "from neurodiag.activations.bernstein import Bernstein\n"
        "m = Bernstein(15, 0.01, -5, 5, num_features=1).init_critical()\n"
        "print(hashlib.md5(b''.join(p.detach().numpy().tobytes() for p in m.parameters()))"
        ".hexdigest())\n"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    }
    assert len(runs) == 1, runs


@pytest.mark.parametrize("degree", [15, 16, 17, 25])
def test_high_degrees_keep_float32_accuracy_and_the_bound(degree: int) -> None:
    """The monomial (power-basis) evaluation in u ∈ [−1, 1] is float32 up to degree 16 and
    float64 above: σ within 2e-6 of its range of the float64 result, grads within 1e-4, and
    σ' ≥ δ̄ as computed (the clamp), with random trained-like coefficients."""
    m = _randomise(Bernstein(degree, 0.005, num_features=8), seed=23, scale=1.5)
    ref = _randomise(Bernstein(degree, 0.005, num_features=8), seed=23, scale=1.5).double()
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(24)) * 4.0
    xr = x.clone().requires_grad_()
    y = m(xr)
    want = ref(x.double())
    span = float(want.max() - want.min())
    assert float((y.double() - want).abs().max()) <= 2e-6 * span
    (gx,) = torch.autograd.grad(y.sum(), xr)
    torch.testing.assert_close(gx.double(), ref.derivative(x.double()), rtol=1e-4, atol=1e-6)
    assert bool((m.derivative(x) >= m.delta_bar * (1 - 1e-6)).all())
    assert bernstein_reference.compute_dtype(torch.float32, degree) == (
        torch.float32 if degree <= 16 else torch.float64
    )
