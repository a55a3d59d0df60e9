"""The hot-path shortcuts are exact: each is checked against the plain computation it replaces.

Covers the non-finite count (``nansum(1 + 0·x)``), the scratch buffer and chunked sweeps, the
lazy states (host counts, batched finite counts, σ' applied per flush for the ReLU step
shortcut), the fused ReLU path and per-site plans, node pre-hooks for ∂L/∂a, the lean
(post-only) module hooks, the numpy summaries, and the absence of host syncs per batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import neurodiag
from neurodiag.activations import derivatives
from neurodiag.sites.capture import SiteRecorder
from neurodiag.stats import functional as fn
from neurodiag.stats import passes
from neurodiag.stats.accumulators import ActivationMagnitude, DerivativeMax, NonFinite
from neurodiag.stats.observation import NO_SHORTCUTS, ForwardObservation, Shortcuts
from neurodiag.stats.site_stats import SiteStats, StatOptions
from tests.fixtures.models import ZOO, make_batches
from tests.test_scan_bruteforce import EPS, TAU, brute_force

RELU = Shortcuts(monotone=True, nonnegative=True, trust_z=True, step=True)
MONOTONE = Shortcuts(monotone=True, nonnegative=True, trust_z=True)


def _poisoned(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    flat = x.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 7)]
    values = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
    flat[idx] = values[torch.arange(idx.numel()) % 3]
    return x.to(dtype)


def _nonfinite(x: Tensor) -> int:
    return int((~torch.isfinite(x)).sum())


@pytest.fixture
def device_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Count non-finite entries on the device, as on an accelerator (no host reads at all)."""
    monkeypatch.setattr(passes, "HOST_READ_DEVICES", frozenset())


@pytest.fixture
def small_scratch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Force the chunked sweeps on tiny tensors."""
    monkeypatch.setattr(passes, "SCRATCH_ELEMENTS", 24)
    passes.release_scratch()
    yield
    passes.release_scratch()


# -- the non-finite count ------------------------------------------------------------------------
def test_add_with_alpha_zero_marks_exactly_the_nonfinite_entries() -> None:
    x = torch.tensor([0.0, -0.0, 1.0, -3e38, 3e38, math.nan, math.inf, -math.inf])
    marks = torch.add(torch.ones(()), x, alpha=0)
    assert torch.isnan(marks).tolist() == [False] * 5 + [True] * 3
    assert marks[:5].tolist() == [1.0] * 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(7,), (5, 9), (3, 4, 6), (2, 3, 4, 5)])
def test_finite_count_is_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = _poisoned(shape, seed=len(shape), dtype=dtype)
    want = x.numel() - _nonfinite(x)
    got = passes.finite_count(x)
    assert got is not None and int(got) == want
    assert int(passes.count_nonfinite(x)) == _nonfinite(x)
    owned = x.clone()
    assert int(passes.finite_count(owned, overwrite=True)) == want  # type: ignore[arg-type]


def test_finite_count_chunked_is_exact(small_scratch: None) -> None:
    x = _poisoned((9, 4, 5), seed=3)
    assert int(passes.finite_count(x)) == x.numel() - _nonfinite(x)  # type: ignore[arg-type]


def test_counts_past_the_exact_float_range_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passes, "_FLOAT32_EXACT_COUNT", 10)
    x = _poisoned((6, 5), seed=4)
    assert passes.finite_count(x) is None
    acc = NonFinite(torch.device("cpu"))
    acc.update_tensor(x)
    stats = SiteStats(5, x.device, torch.float32, StatOptions())
    stats.observe_grad(x, (0,))
    stats.observe_call(x, x.relu(), derivatives.relu, (0,), RELU)
    assert int(acc.count) == _nonfinite(x)
    assert int(stats.nonfinite.count) == 2 * _nonfinite(x)


def test_nonfinite_count_stays_exact_over_many_batched_calls() -> None:
    acc = NonFinite(torch.device("cpu"))
    want = 0
    for i in range(150):  # several flushes of the pending finite counts
        x = _poisoned((3, 5), seed=i)
        want += _nonfinite(x)
        acc.update_tensor(x)
        assert len(acc._finite) < NonFinite._BATCH
    assert int(acc.count) == want
    assert int(acc.state("count")) == want


# -- sweeps ---------------------------------------------------------------------------------------
def _brute(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    return x.abs().sum(dims, dtype=torch.float64), x.amin(dims), x.amax(dims)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(
    ("shape", "feature_dim"), [((10, 3), 1), ((6, 4, 5), 1), ((5, 3, 2, 4), 1), ((6, 5, 3), -1)]
)
@pytest.mark.parametrize("poison", [False, True])
def test_forward_sweep_matches_brute_force(
    chunked: bool,
    shape: tuple[int, ...],
    feature_dim: int,
    poison: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if chunked:
        monkeypatch.setattr(passes, "SCRATCH_ELEMENTS", 2 * math.prod(shape[1:]))
    passes.release_scratch()
    x = _poisoned(shape, seed=5, dtype=torch.float64) if poison else torch.randn(shape).double()
    dims = tuple(i for i in range(len(shape)) if i != feature_dim % len(shape))
    for nonnegative, want_high in ((False, True), (True, False)):
        mag = x.relu() if nonnegative else x
        sweep = passes.forward_sweep(
            magnitude=mag,
            nonnegative=nonnegative,
            extremes=x,
            want_high=want_high,
            counted=(x, mag),
            dims=dims,
            dtype=torch.float64,
        )
        total = _brute(mag, dims)[0]
        torch.testing.assert_close(sweep.sum_abs, total, equal_nan=True)
        torch.testing.assert_close(sweep.low, _brute(x, dims)[1], equal_nan=True)
        if want_high:
            torch.testing.assert_close(sweep.high, _brute(x, dims)[2], equal_nan=True)
        counted = sweep.entries - sum(int(f) for f in sweep.finite)
        assert counted == _nonfinite(x) + _nonfinite(mag)
    passes.release_scratch()


def test_forward_sweep_of_a_non_contiguous_tensor(small_scratch: None) -> None:
    x = _poisoned((5, 4, 6), seed=6).transpose(0, 2)  # (6, 4, 5), not contiguous
    sweep = passes.forward_sweep(
        magnitude=x,
        nonnegative=False,
        extremes=x,
        want_high=True,
        counted=(x,),
        dims=(0, 2),
        dtype=torch.float32,
    )
    torch.testing.assert_close(sweep.sum_abs, x.abs().sum((0, 2)), equal_nan=True)
    assert sweep.entries - sum(int(f) for f in sweep.finite) == _nonfinite(x)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("shape", [(10, 3), (6, 4, 5), (5, 3, 2, 4)])
@pytest.mark.parametrize("host_read", [True, False])
@pytest.mark.parametrize("poison", [True, False])
def test_grad_sweep_matches_brute_force(
    chunked: bool,
    shape: tuple[int, ...],
    host_read: bool,
    poison: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if chunked:
        monkeypatch.setattr(passes, "SCRATCH_ELEMENTS", 2 * math.prod(shape[1:]))
    if not host_read:
        monkeypatch.setattr(passes, "HOST_READ_DEVICES", frozenset())
    passes.release_scratch()
    g = _poisoned(shape, seed=7) if poison else torch.randn(shape)
    dims = tuple(i for i in range(len(shape)) if i != 1)
    total, finite, nonfinite = passes.grad_sweep(g, dims, torch.float32)
    torch.testing.assert_close(total, g.abs().sum(dims), equal_nan=True)
    if host_read:  # Σ|g| checked on the host: a count only when it is not finite
        assert finite is None
        assert (0 if nonfinite is None else int(nonfinite)) == _nonfinite(g)
        assert (nonfinite is None) == (not poison)
    else:
        assert nonfinite is None and finite is not None
        assert g.numel() - int(finite) == _nonfinite(g)
    passes.release_scratch()


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("poison", ["nan", "inf", "-inf", None])
@pytest.mark.parametrize("step", [True, False])
def test_forward_sweep_skips_the_count_only_when_reductions_prove_it_zero(
    chunked: bool, poison: str | None, step: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``reductions_cover``: min with max (or with Σ relu(z), ReLU) see every NaN/±Inf of z."""
    if chunked:
        monkeypatch.setattr(passes, "SCRATCH_ELEMENTS", 12)
    passes.release_scratch()
    z = torch.randn(9, 4, dtype=torch.float64)
    if poison is not None:
        z[3, 2] = float(poison)
        z[7, 0] = float(poison)
    mag = z.relu() if step else F.leaky_relu(z, 0.1)
    sweep = passes.forward_sweep(
        magnitude=mag,
        nonnegative=step,
        extremes=z,
        want_high=not step,
        counted=(z,),
        dims=(0,),
        dtype=torch.float64,
        reductions_cover=True,
    )
    finite = sum(int(f) for f in sweep.finite)
    counted = sweep.entries - finite + sum(int(c) for c in sweep.nonfinite)
    assert counted == _nonfinite(z)
    assert sweep.finite == []  # no counting pass ...
    assert (sweep.nonfinite == []) == (poison is None)  # ... unless something is not finite
    torch.testing.assert_close(sweep.low, z.amin(0), equal_nan=True)
    passes.release_scratch()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2, max_size=24
    ).filter(lambda v: len(v) % 2 == 0)
)
def test_finite_reductions_prove_a_tensor_finite(values: list[float]) -> None:
    """Never a false "finite": any NaN/±Inf entry shows in min, max or a sum of |x|."""
    x = torch.tensor(values, dtype=torch.float32).view(-1, 2)
    low, high = x.amin(0), x.amax(0)
    total = x.abs().sum(0)
    for first, second in ((low, high), (low, total), (total, None)):
        if passes.reductions_show_finite(first, second):
            assert bool(torch.isfinite(x).all())
    if bool(torch.isfinite(x).all()) and float(x.abs().max()) < 1e15:  # no overflow possible
        assert passes.reductions_show_finite(low, high)
        assert passes.reductions_show_finite(total)


@pytest.mark.usefixtures("device_counts")
def test_results_do_not_alias_the_scratch_buffer() -> None:
    """A later call reuses the scratch: what an earlier call returned must not change."""
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    first = passes.grad_sweep(a, (0,), torch.float32)
    scalar = passes.grad_sweep(torch.tensor(-2.0), (), torch.float32)
    saved = [t.clone() for t in (first[0], first[1], scalar[0])]  # type: ignore[union-attr]
    passes.grad_sweep(b, (0,), torch.float32)
    passes.grad_sweep(torch.tensor(7.0), (), torch.float32)
    passes.finite_count(b * 3)
    for before, t in zip(saved, (first[0], first[1], scalar[0]), strict=True):
        torch.testing.assert_close(t, before)
    assert float(scalar[0]) == 2.0


# -- accumulators and lazy states -----------------------------------------------------------------
def test_host_counts_are_folded_in_on_every_read() -> None:
    acc = ActivationMagnitude(3, torch.device("cpu"), torch.float32)
    acc.add(torch.ones(3), 5)
    acc.add(torch.ones(3), 7)
    assert int(acc.positions) == 12  # attribute read
    acc.add(torch.ones(3), 1)
    assert int(acc.state("positions")) == 13
    other = ActivationMagnitude(3, torch.device("cpu"), torch.float32)
    other.add(torch.ones(3), 100)
    acc.add(torch.ones(3), 1)
    acc.merge(other)  # both sides flushed first
    assert int(acc.positions) == 114
    acc.add(torch.ones(3), 2)
    acc.positions = torch.tensor(3)  # assignment replaces the value, pending included
    assert int(acc.positions) == 3
    torch.testing.assert_close(acc.sum_abs_act, torch.full((3,), 6.0))


def _feed(stats: SiteStats, batches: list[Tensor], shortcuts: Shortcuts, inplace: bool) -> None:
    for z in batches:
        a = z.relu()
        stats.observe_call(None if inplace else z, a, derivatives.relu, (0, 2), shortcuts)


def _relu_batches() -> list[Tensor]:
    batches = [torch.randn(4, 6, 3, dtype=torch.float64) for _ in range(5)]
    batches[1][:, 0] = -1.0  # neuron 0 dead in every batch but one
    batches[2][0, 1, 0] = math.nan  # neuron 1 sees a NaN once
    batches[3][:, 2] = math.nan  # neuron 2: one batch entirely NaN
    batches[4][1, 3, 1] = math.inf
    batches[0][0, 4, 0] = -math.inf
    for b in batches:
        b[:, 5] = 2.0  # neuron 5 always active
    return batches


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_step_shortcut_equals_the_general_paths(inplace: bool) -> None:
    """The fused ReLU path, σ' applied once per flush, equals per-call differentiation."""
    batches = _relu_batches()
    results = []
    for shortcuts in (RELU, MONOTONE, Shortcuts(trust_z=True)):
        stats = SiteStats(6, torch.device("cpu"), torch.float64, StatOptions())
        _feed(stats, batches[:2], shortcuts, inplace)
        stats.flush()  # a read in the middle (Monitor windows, reports)
        _feed(stats, batches[2:], shortcuts, inplace)
        results.append(stats)
    ref = results[-1]
    for got in results[:-1]:
        for name in ("max_abs_deriv", "min_abs_deriv"):
            torch.testing.assert_close(
                getattr(got.deriv_max if name[:3] == "max" else got.deriv_min, name),
                getattr(ref.deriv_max if name[:3] == "max" else ref.deriv_min, name),
                equal_nan=True,
            )
        torch.testing.assert_close(got.act.sum_abs_act, ref.act.sum_abs_act, equal_nan=True)
        assert int(got.act.positions) == int(ref.act.positions) == 5 * 4 * 3
        assert int(got.nonfinite.count) == int(ref.nonfinite.count)
    assert ref.deriv_max.max_abs_deriv[0] == 1.0  # fired in one batch: not dead


def test_a_new_derivative_flushes_the_pending_extremes() -> None:
    def relu_copy(z: Tensor | None, a: Tensor | None) -> Tensor:
        return derivatives.relu(z, a)

    acc = DerivativeMax(2, torch.device("cpu"), torch.float32)
    acc.defer(torch.tensor([0.0, 5.0]), derivatives.relu, True)
    acc.defer(torch.tensor([3.0, 0.0]), relu_copy, True)  # different σ': flush first
    acc.defer(torch.tensor([0.0, 0.0]), relu_copy, False)  # different input side: flush again
    assert acc.max_abs_deriv.tolist() == [1.0, 1.0]


def test_streaming_fused_path_equals_one_shot() -> None:
    z = torch.randn(12, 5, dtype=torch.float64)
    whole = SiteStats(5, z.device, torch.float64, StatOptions())
    whole.observe(ForwardObservation(z, z.relu(), derivatives.relu, (0,), NO_SHORTCUTS))
    parts = SiteStats(5, z.device, torch.float64, StatOptions())
    for chunk in z.chunk(4):
        parts.observe_call(chunk, chunk.relu(), derivatives.relu, (0,), RELU)
    a, b = whole.summarize(None), parts.summarize(None)
    for key in ("dead_pct", "dormant_pct", "min_abs_deriv", "nonfinite"):
        assert a.row[key] == pytest.approx(b.row[key])
    torch.testing.assert_close(a.neurons["mean_abs_activation"], b.neurons["mean_abs_activation"])


# -- summaries ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [
        [0.0, 1.0, 2.0, 5.0],
        [0.0, 0.0, 0.0],
        [1.0, 3.0, math.nan],
        [math.inf, 1.0, 0.5, -0.0],
        [],
    ],
)
def test_numpy_summaries_match_the_torch_functions(values: list[float]) -> None:
    t = torch.tensor(values, dtype=torch.float32)
    a = t.numpy()
    with np.errstate(all="ignore"):
        torch.testing.assert_close(
            torch.from_numpy(fn.normalized_scores_np(a)), fn.normalized_scores(t), equal_nan=True
        )
        for tau in (0.0, 0.1, 1.0):
            assert fn.dormant_percent_np(fn.normalized_scores_np(a), tau) == fn.dormant_percent(
                fn.normalized_scores(t), tau
            )
        for positions in (0, 7):
            want = fn.mean_abs_gradient(t, torch.tensor(positions))
            assert fn.mean_abs_gradient_np(a, positions) == pytest.approx(want, nan_ok=True)
        assert fn.nan_min_np(a) == pytest.approx(fn.nan_min(t), nan_ok=True)


# -- the recorder: hooks, plans, scan-level equality ---------------------------------------------
def _hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def test_lean_hooks_replace_the_pre_hook_after_discovery() -> None:
    model = ZOO["inplace_relu"]().double()
    before = _hook_counts(model)
    x = make_batches("inplace_relu", model)[0][0]
    with SiteRecorder(model, StatOptions()) as rec:
        model(x).sum().backward()
        for act in (model.act1, model.act2):
            assert len(act._forward_pre_hooks) == 0 and len(act._forward_hooks) == 1
        model(x).sum().backward()
        assert len(rec._plans) == 2
    assert _hook_counts(model) == before


@pytest.mark.parametrize("name", ["inplace_relu", "reused_relu", "conv", "sequence"])
def test_scan_with_tiny_chunks_matches_brute_force(
    name: str, small_scratch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passes, "DERIVATIVE_CHUNK", 10)  # σ' in slices of a row or two
    torch.manual_seed(0)
    model = ZOO[name]().double()
    batches = make_batches(name, model, n_batches=4)
    expected = brute_force(name, model, batches)
    report = neurodiag.scan(model, batches, eps=EPS, tau=TAU)
    for site, want in expected.items():
        got = report.row(site)
        for key in ("dead_pct", "dormant_pct", "grad_dormant_pct"):
            assert got[key] == pytest.approx(want[key], abs=1e-9), (site, key)
        for key in ("mag", "min_abs_deriv"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (site, key)


@pytest.mark.parametrize(
    ("shape", "dims"),
    [((12, 5), (0,)), ((7, 3, 4), (0, 1)), ((5, 3, 2, 4), (0, 2, 3)), ((6, 4), (1,)), ((), ())],
)
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_derivative_extremes_in_slices_equal_the_whole_tensor(
    shape: tuple[int, ...], dims: tuple[int, ...], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passes, "DERIVATIVE_CHUNK", chunk)
    z = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    if z.dim():
        z.view(-1)[::5] = math.nan
    a = F.gelu(z)
    full = derivatives.gelu(z, a).abs()
    high, low = passes.derivative_extremes(derivatives.gelu, z, a, dims)
    want_high = full.amax(dims) if dims else full
    want_low = full.amin(dims) if dims else full
    torch.testing.assert_close(high, want_high, equal_nan=True)
    torch.testing.assert_close(low, want_low, equal_nan=True)


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


# -- no host sync per batch ----------------------------------------------------------------------
class _SyncSpy(TorchDispatchMode):
    SYNCS = ("_local_scalar_dense", "nonzero", "item", "equal")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.__name__
        if any(s in name for s in self.SYNCS):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_sync_spy_sees_a_host_read() -> None:
    spy = _SyncSpy()
    with spy:
        float(torch.ones(3).sum())
    assert spy.seen


@pytest.mark.parametrize("name", ["inplace_relu", "smooth", "conv", "functional"])
def test_no_host_sync_while_measuring(name: str, device_counts: None) -> None:
    """With device-side counts (what accelerators use) nothing is read back per batch."""
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


def test_relu_counts_use_the_registry_relu_derivative() -> None:
    """The step shortcut is tied to the registry's ReLU derivative, not to a name."""
    from neurodiag.activations.registry import REGISTRY
    from neurodiag.sites.capture import _shortcuts

    assert _shortcuts(REGISTRY["relu"], {}).step
    assert not _shortcuts(REGISTRY["leaky_relu"], {"negative_slope": 0.01}).step
    assert not _shortcuts(REGISTRY["softplus"], {}).step  # monotone, non-negative, not a step


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
