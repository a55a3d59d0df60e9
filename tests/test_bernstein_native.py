"""The neurodiag::bernstein custom op (neurodiag.activations.native): torch.library.opcheck with
and without the C kernels, the defining sum, the reference, non-finite inputs, thread splits,
where it applies, and how it fails. Only the tests that need a C compiler skip without one."""

from __future__ import annotations

import copy
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from neurodiag import native_build
from neurodiag.activations import native
from neurodiag.activations.bernstein import Bernstein
from tests.test_bernstein import LAYOUTS, _randomise, brute, brute_slope

F64 = torch.float64
NATIVE, REFERENCE = "C kernels", "reference"


def _path(fn: Callable[[], object]) -> str:
    """Which code fn ran: the op's C kernels (they run through native._map) or the reference."""
    calls: list[int] = []
    original = native._map

    def counting(*args: Any) -> None:
        calls.append(1)
        original(*args)

    native._map = counting
    try:
        fn()
    finally:
        native._map = original
    return NATIVE if calls else REFERENCE


@pytest.fixture
def _kernels() -> None:
    if native.kernels() is None:
        pytest.skip(native.status())


def _op_args(m: Bernstein, x: Tensor) -> tuple[object, ...]:
    return (x, m.c0, m.increments, m._conversion(), m.lower, m.upper, m.feature_dim, True)


@pytest.mark.parametrize("built", [True, False])
@pytest.mark.parametrize(("num_features", "feature_dim", "shape"), [*LAYOUTS, (13, 1, (3, 13))])
def test_opcheck_with_and_without_the_c_kernels(
    monkeypatch: pytest.MonkeyPatch,
    built: bool,
    num_features: int | None,
    feature_dim: int,
    shape: tuple[int, ...],
) -> None:
    """Schema, fake (meta) implementation, autograd registration and dispatch-mode tests of
    torch.library.opcheck on the forward and the backward op, in float32 and float64; without
    the C kernels (no compiler) the op computes the reference formulas and must equal the
    module's reference path."""
    if built and native.kernels() is None:
        pytest.skip(native.status())
    if not built:
        monkeypatch.setattr(native, "kernels", lambda: None)
    for dtype in (torch.float32, F64):
        m = _randomise(Bernstein(5, 0.05, -2.0, 3.0, num_features, feature_dim).to(dtype))
        gen = torch.Generator().manual_seed(2)
        x = (torch.randn(shape, generator=gen, dtype=dtype) * 4.0).requires_grad_()
        plain = [a.detach() if isinstance(a, Tensor) else a for a in _op_args(m, x)]
        torch.library.opcheck(torch.ops.neurodiag.bernstein.default, plain)
        g = torch.randn(shape, generator=gen, dtype=dtype)
        for need in ((True, True), (True, False), (False, True)):
            table = torch.ops.neurodiag.bernstein.default(*plain)[1]  # the forward's
            back = (g, *plain[:4], table, *plain[4:], *need)  # no input needs a gradient
            torch.library.opcheck(torch.ops.neurodiag.bernstein_backward.default, back)
        (got, *grads), _ = _run_op(m, x.detach(), g)
        (want, *want_grads), name = _run(_pair(m), x.detach(), g)
        assert name == REFERENCE
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
        torch.testing.assert_close(got, want, **tol)
        for a, b in zip(grads, want_grads):
            torch.testing.assert_close(a, b, **tol)


def _run_op(m: Bernstein, x: Tensor, g: Tensor) -> tuple[tuple[Tensor, ...], str]:
    """_run through the op itself, whatever the module would choose."""
    xr = x.clone().requires_grad_()
    out: list[tuple[Tensor, ...]] = []

    def run() -> None:
        y = native.BernsteinFunction.apply(*_op_args(m, xr))
        out.append((y.detach(), *torch.autograd.grad(y, [xr, m.c0, m.theta], g)))

    path = _path(run)
    return out[0], path


def test_the_op_composes_with_torch_compile_and_dispatch_modes() -> None:
    """The op under torch.compile (its fake implementation traces, the call stays opaque) and
    under a dispatch mode gives the eager op's values and gradients."""
    m = _randomise(Bernstein(9, num_features=5), seed=40)
    x = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(41)) * 4.0
    g = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(42))
    eager, _ = _run_op(m, x, g)
    compiled = torch.compile(
        lambda v: native.BernsteinFunction.apply(*_op_args(m, v)), fullgraph=True
    )
    xr = x.clone().requires_grad_()
    y = compiled(xr)
    got = (y.detach(), *torch.autograd.grad(y, [xr, m.c0, m.theta], g))
    for a, b in zip(eager, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        under_mode, _ = _run_op(m, x, g)
    assert "neurodiag.bernstein.default" in seen and "neurodiag.bernstein_backward.default" in seen
    for a, b in zip(eager, under_mode):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _pair(m: Bernstein) -> Bernstein:
    """A copy of m that runs the reference."""
    twin = Bernstein(m.degree, m.delta, m.lower, m.upper, m.num_features, m.feature_dim)
    twin.to(m.c0.dtype).load_state_dict(m.state_dict())
    twin.native_kernel = False
    return twin


def _run(m: Bernstein, x: Tensor, g: Tensor) -> tuple[tuple[Tensor, ...], str]:
    """(value, ∂L/∂x, ∂L/∂c0, ∂L/∂θ) and the name of the backward node that ran."""
    xr = x.clone().requires_grad_()
    out: list[tuple[Tensor, ...]] = []

    def run() -> None:
        y = m(xr)
        out.append((y.detach(), *torch.autograd.grad(y, [xr, m.c0, m.theta], g)))

    path = _path(run)
    return out[0], path


@pytest.mark.usefixtures("_kernels")
@pytest.mark.parametrize(("num_features", "feature_dim", "shape"), [*LAYOUTS, (13, 1, (3, 13))])
@pytest.mark.parametrize("degree", [1, 2, 9, 16])
def test_native_matches_the_defining_sum_and_the_reference(
    num_features: int | None, feature_dim: int, shape: tuple[int, ...], degree: int
) -> None:
    """float32 values, ∂L/∂x against the defining sum and its slope (float64), and ∂L/∂c0,
    ∂L/∂θ against the reference; inputs inside and outside [l, u]. 13 features: a
    vector tail (the table is padded to whole vectors)."""
    m = _randomise(Bernstein(degree, 0.05, -2.0, 3.0, num_features, feature_dim), seed=degree)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen) * 4.0 + 0.5
    g = torch.randn(shape, generator=gen)
    (y, gx, gc0, gth), name = _run(m, x, g)
    assert name == NATIVE
    ref = copy.deepcopy(m).double()
    span = float(ref.coefficients.detach().abs().max())
    torch.testing.assert_close(y.double(), brute(ref, x.double()), rtol=1e-5, atol=2e-6 * span)
    slope = brute_slope(ref, x.double().clamp(-2.0, 3.0))
    torch.testing.assert_close(gx.double(), g.double() * slope, rtol=1e-5, atol=1e-6 * span)
    (_, _, want_c0, want_th), name = _run(_pair(m), x, g)
    assert name == REFERENCE
    torch.testing.assert_close(gc0, want_c0, rtol=1e-5, atol=1e-5 * float(want_c0.abs().max()))
    torch.testing.assert_close(gth, want_th, rtol=1e-5, atol=1e-5 * float(want_th.abs().max()))


@pytest.mark.usefixtures("_kernels")
def test_native_non_finite_inputs_match_the_reference() -> None:
    """σ(±∞) = ±∞, NaN stays in its feature, huge inputs keep their precision; the θ gradient
    has ±∞ in the boundary entry of the ±∞ features and NaN only in the NaN feature."""
    m = _randomise(Bernstein(9, num_features=6), seed=3)
    inf, nan = math.inf, math.nan
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(4)) * 6.0
    x[0, :5] = torch.tensor([-inf, inf, -1e30, 3e38, nan])
    g = torch.randn(9, 6, generator=torch.Generator().manual_seed(5))
    g[0, :2] = 0.7
    (y, gx, gc0, gth), _ = _run(m, x, g)
    want = _run(_pair(m), x, g)[0]
    assert float(y[0, 0]) == -inf and float(y[0, 1]) == inf and bool(y[0, 4].isnan())
    assert float(gth[0, 0]) == -inf and float(gth[1, -1]) == inf
    assert gth.isnan().any(dim=1).tolist() == [False] * 4 + [True, False]
    for got, ref in zip((y, gx, gc0, gth), want):
        finite, infinite = ref.isfinite(), ref.isinf()
        assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got[infinite], ref[infinite])
        scale = float(ref[finite & (ref.abs() < 1e6)].abs().max())
        torch.testing.assert_close(got[finite], ref[finite], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.usefixtures("_kernels")
@pytest.mark.parametrize(
    ("num_features", "shape"), [(7, (10, 7)), (None, (10, 3, 5)), (3, (9, 3, 4))]
)
def test_thread_split_gives_the_same_result(
    monkeypatch: pytest.MonkeyPatch, num_features: int | None, shape: tuple[int, ...]
) -> None:
    """Split over 3 threads (forced on small inputs): identical values and ∂L/∂x, parameter
    gradients equal up to the order of the float64 sums."""
    m = _randomise(Bernstein(9, num_features=num_features), seed=6)
    gen = torch.Generator().manual_seed(7)
    x, g = torch.randn(shape, generator=gen) * 4.0, torch.randn(shape, generator=gen)
    whole, _ = _run(m, x, g)
    monkeypatch.setattr(native_build, "PER_THREAD", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert len(native_build.parts(shape[0], x.numel())) == 3
    split, _ = _run(m, x, g)
    assert torch.equal(whole[0], split[0]) and torch.equal(whole[1], split[1])
    for a, b in zip(whole[2:], split[2:]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.usefixtures("_kernels")
def test_a_training_step_matches_the_reference() -> None:
    """Five Adam steps of a small MLP with Bernstein: the same parameters either way."""
    torch.manual_seed(8)
    x, target = torch.randn(64, 10), torch.randn(64, 1)

    def net(native_kernel: bool) -> torch.nn.Sequential:
        torch.manual_seed(9)
        layers = torch.nn.Sequential(
            torch.nn.Linear(10, 16), Bernstein(num_features=16), torch.nn.Linear(16, 1)
        )
        layers[1].native_kernel = native_kernel
        return layers

    nets = [net(True), net(False)]
    for model in nets:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), target).backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("_kernels")
def test_where_the_native_kernels_apply() -> None:
    """float32 contiguous CPU input, eager, default settings; every other case runs the PyTorch
    reference (float64, bf16, strided input, compiled_kernel, native_kernel off, degree > 16);
    torch.func transforms go through the op."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(4, 5, 6, generator=gen, requires_grad=True)

    def path(m: Bernstein, inp: Tensor) -> str:
        return _path(lambda: m(inp).sum().backward())

    assert path(Bernstein(num_features=5), x) == NATIVE
    assert path(Bernstein(num_features=5).double(), x.double()) != NATIVE
    assert path(Bernstein(num_features=5), x.bfloat16()) != NATIVE
    assert path(Bernstein(num_features=5), x.transpose(0, 2).transpose(0, 2)[:, :, ::2]) != NATIVE
    for attr, value in (("compiled_kernel", True), ("native_kernel", False)):
        m = Bernstein(num_features=5)
        setattr(m, attr, value)
        assert path(m, x) != NATIVE
    assert path(Bernstein(17, num_features=5), x) != NATIVE
    m = Bernstein(num_features=5)
    grads = torch.func.grad(lambda inp: m(inp).sum())(x.detach())
    torch.testing.assert_close(grads, m.derivative(x.detach()))


def _fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEURODIAG_CACHE", str(tmp_path))
    native.kernels.cache_clear()


@pytest.fixture
def _restore_kernels() -> object:
    yield
    native.kernels.cache_clear()  # the next caller loads the real cache again


@pytest.mark.usefixtures("_kernels", "_restore_kernels")
def test_build_is_cached_and_a_failed_build_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """First use compiles into the cache; later processes load it without compiling; a
    missing compiler or NEURODIAG_NATIVE=0 leaves the reference in use, with the reason."""
    _fresh(monkeypatch, tmp_path)
    lib = native.kernels()
    assert (
        lib is not None and lib.path.parent == tmp_path and lib.path.name.startswith("bernstein-")
    )
    assert [p.name for p in tmp_path.iterdir()] == [lib.path.name]  # no temporary left behind

    def no_compiler(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    native.kernels.cache_clear()
    again = native.kernels()
    assert again is not None and again.path == lib.path

    monkeypatch.undo()
    _fresh(monkeypatch, tmp_path / "other")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert native.kernels() is None
    assert "no-such-cc" in native.status() and native.status().startswith("native kernels off")
    m = _randomise(Bernstein(9, num_features=5), seed=11)
    x = torch.randn(3, 5, requires_grad=True)
    y = m(x)
    assert _path(lambda: m(x)) == REFERENCE
    torch.testing.assert_close(y, _pair(m)(x))

    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("NEURODIAG_NATIVE", "0")
    assert native.kernels() is None and "NEURODIAG_NATIVE=0" in native.status()
