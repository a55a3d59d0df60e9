"""The measuring path: each shortcut of ``neurodiag.stats.reductions`` equals the reference.

``exact_forward`` / ``exact_grad`` (masks, slices) are the reference; the finite-proved CPU
path and the ReLU step path must give the same per-neuron reductions on clean and poisoned
tensors, whole or in slices; accelerators' path reads nothing back per batch; the recorder's
lean hooks and plans give the scan's numbers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import neurodiag
from neurodiag.activations import derivatives
from neurodiag.config import ScanConfig
from neurodiag.scan import recorder_for
from neurodiag.stats import reductions
from neurodiag.stats.bundle import SiteStats
from neurodiag.stats.reductions import exact_forward, exact_grad, reduce_forward, reduce_grad
from tests.fixtures.models import ZOO, make_batches
from tests.test_scan_bruteforce import EPS, TAU, assert_matches, brute_force


def _poisoned(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    flat = x.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 7)]
    values = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
    flat[idx] = values[torch.arange(idx.numel()) % 3]
    return x.to(dtype)


@pytest.fixture
def device_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measure as on an accelerator: no host read, the exact path for every call."""
    monkeypatch.setattr(reductions, "HOST_READ_DEVICES", frozenset())


@pytest.fixture
def tiny_slices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Slices of a row or two and a scratch limit of a few elements."""
    monkeypatch.setattr(reductions, "SLICE_ELEMENTS", 10)
    monkeypatch.setattr(reductions, "SCRATCH_LIMIT", 24)
    reductions.release_scratch()
    yield
    reductions.release_scratch()


def _same(got: object, want: object) -> None:
    for field in ("finite_positions", "sum_abs_act", "active_entries", "nonfinite",
                  "grad_finite_positions", "sum_abs_grad"):  # fmt: skip
        if not hasattr(want, field):
            continue
        g, w = getattr(got, field), getattr(want, field)
        g = torch.as_tensor(g, dtype=torch.float64).expand_as(torch.as_tensor(w))
        torch.testing.assert_close(g, torch.as_tensor(w, dtype=torch.float64), msg=field)


ACTIVATIONS = {
    "relu": (torch.relu, derivatives.relu, True),
    "gelu": (F.gelu, derivatives.gelu, False),
    "tanh": (torch.tanh, derivatives.tanh, False),
    "leaky": (F.leaky_relu, derivatives.leaky_relu, False),
}
SHAPES = [
    ((12, 5), (0,)),
    ((7, 3, 4), (0, 1)),
    ((5, 3, 2, 4), (0, 2, 3)),
    ((6, 4), (1,)),
    ((5,), ()),
]


@pytest.mark.parametrize("slices", [False, True])
@pytest.mark.parametrize(("shape", "dims"), SHAPES)
@pytest.mark.parametrize("poison", [False, True])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("inplace", [False, True])
def test_forward_shortcuts_equal_the_exact_path(
    name: str, shape: tuple[int, ...], dims: tuple[int, ...], poison: bool, slices: bool,
    inplace: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    if slices:
        monkeypatch.setattr(reductions, "SLICE_ELEMENTS", 10)
        monkeypatch.setattr(reductions, "SCRATCH_LIMIT", 24)
    fn, derivative, step = ACTIVATIONS[name]
    z = _poisoned(shape, 1) if poison else torch.randn(shape, dtype=torch.float64)
    a = fn(z)
    pre = None if inplace and name in ("relu", "tanh") else z  # from-output kinds
    got = reduce_forward(pre, a, derivative, dims, EPS, torch.float64, step=step)
    want = exact_forward(pre, a, derivative, dims, EPS, torch.float64)
    _same(got, want)
    if got.max_abs_deriv is not None:
        torch.testing.assert_close(got.max_abs_deriv, want.max_abs_deriv)
        torch.testing.assert_close(got.min_abs_deriv, want.min_abs_deriv)
    else:  # the step shortcut: extremes from the totals
        finite = torch.as_tensor(got.finite_positions, dtype=torch.float64)
        high, low = reductions.step_extremes(
            got.active_entries, finite.expand_as(got.active_entries)
        )
        torch.testing.assert_close(high, want.max_abs_deriv.to(high.dtype))
        torch.testing.assert_close(low, want.min_abs_deriv.to(low.dtype))


def test_the_exact_path_counts_by_definition() -> None:
    """The reference itself, on a hand-made tensor: one NaN, one -Inf, the rest by hand."""
    z = torch.tensor([[1.0, -2.0], [math.nan, 3.0], [-1.0, -math.inf]], dtype=torch.float64)
    red = exact_forward(z, torch.relu(z), derivatives.relu, (0,), EPS, torch.float64)
    assert red.finite_positions.tolist() == [2, 2]
    assert red.active_entries.tolist() == [1, 1]  # 1.0 | 3.0
    assert red.sum_abs_act.tolist() == [1.0, 3.0]
    assert red.max_abs_deriv.tolist() == [1.0, 1.0]
    assert red.min_abs_deriv.tolist() == [0.0, 0.0]
    assert int(red.nonfinite) == 2


@pytest.mark.parametrize(("shape", "dims"), SHAPES)
@pytest.mark.parametrize("poison", [False, True])
def test_grad_shortcut_equals_the_exact_path(
    shape: tuple[int, ...], dims: tuple[int, ...], poison: bool
) -> None:
    g = _poisoned(shape, 2) if poison else torch.randn(shape, dtype=torch.float64)
    _same(reduce_grad(g, dims, torch.float64), exact_grad(g, dims, torch.float64))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=32),
            st.sampled_from([0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38]),
        ),
        min_size=6,
        max_size=6,
    ),
    st.sampled_from(sorted(ACTIVATIONS)),
)
def test_a_finite_verdict_is_never_wrong(values: list[float], name: str) -> None:
    """Whatever the values (overflowing sums included), the shortcut agrees with the reference."""
    fn, derivative, step = ACTIVATIONS[name]
    z = torch.tensor(values, dtype=torch.float32).reshape(3, 2)
    a = fn(z)
    got = reduce_forward(z, a, derivative, (0,), EPS, torch.float32, step=step)
    want = exact_forward(z, a, derivative, (0,), EPS, torch.float32)
    _same(got, want)


def test_site_stats_step_extremes_follow_merges() -> None:
    """max/min |σ'| of a step site derived from totals stay right across windows and merges."""
    config = ScanConfig()
    z1 = torch.tensor([[1.0, -1.0], [2.0, -3.0]])
    z2 = torch.tensor([[-1.0, -1.0], [2.0, -3.0]])
    whole, parts = (
        SiteStats(2, z1.device, z1.dtype, config),
        SiteStats(2, z1.device, z1.dtype, config),
    )
    other = parts.fresh()
    for stats, z in ((whole, z1), (whole, z2), (parts, z1), (other, z2)):
        stats.observe_forward(z, torch.relu(z), derivatives.relu, (0,), step=True)
    parts.merge(other)
    for s in (whole, parts):
        s.flush()
        assert s.store["max_abs_deriv"].tolist() == [1.0, 0.0]
        assert s.store["min_abs_deriv"].tolist() == [0.0, 0.0]
        assert s.store["active_entries"].tolist() == [3.0, 0.0]


# -- scan level ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["inplace_relu", "reused_relu", "conv", "sequence", "smooth"])
@pytest.mark.parametrize("path", ["tiny_slices", "device_path"])
def test_scan_on_every_path_matches_brute_force(
    name: str, path: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(path)
    torch.manual_seed(0)
    model = ZOO[name]().double()
    batches = make_batches(name, model, n_batches=3)
    report = neurodiag.scan(model, batches, eps=EPS, tau=TAU)
    assert_matches(report, brute_force(name, model, batches))


# -- the recorder: hooks, plans -------------------------------------------------------------
def _hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def test_lean_hooks_replace_the_pre_hook_after_discovery() -> None:
    model = ZOO["inplace_relu"]().double()
    before = _hook_counts(model)
    x = make_batches("inplace_relu", model)[0][0]
    with recorder_for(model, ScanConfig()) as rec:
        model(x).sum().backward()
        for act in (model.act1, model.act2):
            assert len(act._forward_pre_hooks) == 0 and len(act._forward_hooks) == 1
        model(x).sum().backward()
        assert len(rec._plans) == 2
    assert _hook_counts(model) == before


def test_plans_follow_changes_of_shape_and_dtype() -> None:
    """Batches of different sizes (and a dtype switch) go back through the general path."""
    torch.manual_seed(0)
    model = ZOO["inplace_relu"]().double()
    batches = make_batches("inplace_relu", model, n_batches=5)
    batches = [(x[: 3 + i], y[: 3 + i]) for i, (x, y) in enumerate(batches)]
    expected = brute_force("inplace_relu", model, batches)
    report = neurodiag.scan(model, batches, eps=EPS, tau=TAU)
    for site, want in expected.items():
        assert report.row(site)["dormant_pct"] == pytest.approx(want["dormant_pct"], abs=1e-9)
        assert report.row(site)["mag"] == pytest.approx(want["mag"], rel=1e-9)
    model32 = copy.deepcopy(model).float()
    with neurodiag.Monitor(model32) as monitor:
        for x, y in batches[:2]:
            F.cross_entropy(model32(x.float()), y).backward()
        for x, y in batches[2:]:
            F.cross_entropy(model32.double()(x), y).backward()
    assert monitor.report().row("act1")["nonfinite"] == 0


class _TwoOutputs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * 2, torch.tanh(x)

    @staticmethod
    def backward(ctx, g0: Tensor, g1: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g0 * 2 + g1 * (1 - torch.tanh(x) ** 2)


class SecondOutputTanh(nn.Module):
    """An activation whose output is output 1 of its autograd node (output_nr = 1)."""

    def forward(self, x: Tensor) -> Tensor:
        return _TwoOutputs.apply(x)[1]


def test_node_pre_hook_reads_the_gradient_at_the_output_index() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), SecondOutputTanh(), nn.Linear(6, 3)).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    report = neurodiag.scan(model, [(x, y)])
    h = model[0](x).requires_grad_(True)
    a = torch.tanh(h)
    a.retain_grad()
    F.cross_entropy(model[2](a), y).backward()
    assert report.row(report.sites[0])["mag"] == pytest.approx(float(a.grad.abs().mean()))


def test_gradient_hooks_see_a_view_relu_and_a_retained_graph() -> None:
    torch.manual_seed(0)
    model = ZOO["conv"]().double()
    (x, y), *_ = make_batches("conv", model)
    expected = brute_force("conv", model, [(x, y), (x, y)])
    with neurodiag.Monitor(model) as monitor:
        loss = F.cross_entropy(model(x), y)
        loss.backward(retain_graph=True)  # hooks fire once per backward
        F.cross_entropy(model(x), y).backward()
    got = monitor.report()
    for site, want in expected.items():
        assert got.row(site)["mag"] == pytest.approx(want["mag"], rel=1e-9)


# -- no host sync per batch ------------------------------------------------------------------------
class _SyncSpy(TorchDispatchMode):
    """Records every op that reads a device value back to the host."""

    SYNCS = ("_local_scalar_dense", "nonzero", "item", "equal", "_to_copy")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.__name__
        if any(s in name for s in self.SYNCS[:4]):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_sync_spy_sees_a_host_read() -> None:
    spy = _SyncSpy()
    with spy:
        float(torch.ones(3).sum())
    assert spy.seen


@pytest.mark.parametrize("name", ["inplace_relu", "smooth", "conv", "functional"])
def test_no_host_sync_while_measuring_on_the_device_path(name: str, device_path: None) -> None:
    """With the accelerators' path nothing is read back per batch (fails on any per-call read)."""
    torch.manual_seed(0)
    model = ZOO[name]().double()
    batches = make_batches(name, model, n_batches=3)
    with neurodiag.Monitor(model) as monitor:
        for i, (x, y) in enumerate(batches):
            spy = _SyncSpy()
            with spy:
                F.cross_entropy(model(x), y).backward()
            if i:  # the first forward creates the sites (host reads allowed there)
                assert spy.seen == [], spy.seen
    monitor.report()


def test_the_cpu_path_reads_back_once_per_call() -> None:
    """The control: on the CPU the finite check is a host read, which the spy does see."""
    torch.manual_seed(0)
    model = ZOO["smooth"]().double()
    (x, y), *_ = make_batches("smooth", model, n_batches=2)
    with neurodiag.Monitor(model):
        F.cross_entropy(model(x), y).backward()
        spy = _SyncSpy()
        with spy:
            F.cross_entropy(model(x), y).backward()
    assert spy.seen


def test_bfloat16_model_is_measured_like_float32() -> None:
    """bf16 activations: scratch, marks and extremes in bf16, states in float32."""
    torch.manual_seed(0)
    model = ZOO["inplace_relu"]()
    batches = [(x.float(), y) for x, y in make_batches("inplace_relu", model, n_batches=3)]
    ref = neurodiag.scan(model, batches)
    low = neurodiag.scan(copy.deepcopy(model).bfloat16(), [(x.bfloat16(), y) for x, y in batches])
    for site in ref.sites:
        assert low.row(site)["nonfinite"] == 0
        assert low.row(site)["dead_pct"] == ref.row(site)["dead_pct"]
        assert low.row(site)["min_abs_deriv"] == ref.row(site)["min_abs_deriv"]


def test_a_call_without_positions_folds_nothing_and_is_no_step_call() -> None:
    """A batch of 0 rows (amax has nothing to reduce): zero counts, empty extremes, and a GELU
    site is not taken for a step site (max/min of σ' would be derived from counts)."""
    from neurodiag.activations import derivatives
    from neurodiag.stats.reductions import reduce_forward

    a = torch.empty(0, 3)
    red = reduce_forward(
        a, torch.nn.functional.gelu(a), derivatives.gelu, (0,), 1e-8, torch.float32
    )
    assert red.finite_positions == 0 and red.nonfinite == 0
    assert red.max_abs_deriv is not None and bool((red.max_abs_deriv == -math.inf).all())
    assert red.min_abs_deriv is not None and bool((red.min_abs_deriv == math.inf).all())
    assert red.sum_abs_act.tolist() == [0.0, 0.0, 0.0]
