"""The C folds (``neurodiag.stats.native_fold``) give the PyTorch path's states, per neuron.

Each test measures the same calls twice, through a ``SiteStats`` bound to the C folds and one on
the PyTorch path (``native_fold.ENABLED = False``; that path is pinned to the exact reference by
tests/test_reductions.py and to hand-written hooks by tests/test_scan_bruteforce.py), and compares
every state: counts, maxima and minima exactly, sums to float32 rounding (the C path sums in
double, PyTorch in float32).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import neurodiag
import neurodiag.native_build as native_build
from neurodiag.activations import derivatives
from neurodiag.config import ScanConfig
from neurodiag.stats import native_fold
from neurodiag.stats.bundle import SiteStats
from neurodiag.stats.reductions import step_shortcut

SUMS = ("sum_abs_act", "sum_abs_grad")

# name: (σ, σ', step site)
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], derivatives.DerivativeFn, bool]] = {
    "relu": (torch.relu, derivatives.relu, True),
    "gelu": (F.gelu, derivatives.gelu, False),
    "tanh": (torch.tanh, derivatives.tanh, False),
}
LEAKY = (lambda z: F.leaky_relu(z, 0.01), derivatives.leaky_relu, False)
# (shape, reduction dims): dense, conv, sequence, neurons first, no position dim
LAYOUTS = [
    ((37, 11), (0,)),
    ((5, 6, 3, 4), (0, 2, 3)),
    ((4, 7, 9), (0, 1)),
    ((6, 13), (1,)),
    ((3, 5, 8), (0, 2)),
    ((9,), ()),
]


@pytest.fixture(autouse=True)
def _kernels() -> Iterator[None]:
    if native_fold.kernels() is None:
        pytest.skip(native_fold.status())
    yield
    native_fold.ENABLED = True


def _stats(config: ScanConfig, neurons: int) -> SiteStats:
    return SiteStats(neurons, torch.device("cpu"), torch.float32, config)


def _measure(
    native: bool,
    calls: list[tuple[Tensor | None, Tensor, Tensor]],
    name: str,
    dims: tuple[int, ...],
    neurons: int,
    config: ScanConfig | None = None,
) -> tuple[SiteStats, list[bool]]:
    """Both observations of every call; which calls the C path folded."""
    _, derivative, step = LEAKY if name == "leaky" else ACTIVATIONS[name]
    native_fold.ENABLED = native
    stats = _stats(config or ScanConfig(), neurons)
    assert (stats._native is not None) or not native
    taken = []
    shortcut = step_shortcut(step, stats.config.eps)  # as SiteStats.observe_forward asks
    for z, a, g in calls:
        if native:
            assert stats._native is not None
            taken.append(stats._native.forward(z, a, derivative, dims, shortcut))
            if not taken[-1]:
                stats.observe_forward(z, a, derivative, dims, step)
            if not stats._native.grad(g, dims):
                stats.observe_grad(g, dims)
            stats.step = stats.step or (shortcut and taken[-1])
        else:
            stats.observe_forward(z, a, derivative, dims, step)
            stats.observe_grad(g, dims)
    native_fold.ENABLED = True
    return stats, taken


def _assert_same(got: SiteStats, want: SiteStats) -> None:
    got.flush()
    want.flush()
    assert list(got.store.specs) == list(want.store.specs)
    for (name, value), (_, expected) in zip(got.store.items(), want.store.items(), strict=True):
        if name in SUMS:
            torch.testing.assert_close(value, expected, rtol=3e-6, atol=1e-6, msg=name)
        else:
            assert torch.equal(value, expected), (name, value, expected)


def _calls(
    name: str, shape: tuple[int, ...], seed: int, keep_z: bool, n: int = 3, scale: float = 2.0
) -> list[tuple[Tensor | None, Tensor, Tensor]]:
    act = ACTIVATIONS[name][0]
    keep_z = keep_z or name == "gelu"  # σ' of GELU reads z
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        z = torch.randn(shape, generator=g) * scale
        out.append((z if keep_z else None, act(z), torch.randn(shape, generator=g)))
    return out


def _neurons(shape: tuple[int, ...], dims: tuple[int, ...]) -> int:
    return math.prod(n for i, n in enumerate(shape) if i not in dims)


# ReLU with and without z (one pass over z, or over a); σ' of GELU reads z, of tanh only a
SITES = [("relu", False), ("relu", True), ("gelu", True), ("tanh", False)]


@pytest.mark.parametrize(("name", "keep_z"), SITES)
@pytest.mark.parametrize(("shape", "dims"), LAYOUTS)
def test_the_c_folds_give_the_pytorch_states(
    name: str, keep_z: bool, shape: tuple[int, ...], dims: tuple[int, ...]
) -> None:
    calls = _calls(name, shape, seed=len(shape) + 7 * keep_z, keep_z=keep_z)
    neurons = _neurons(shape, dims)
    got, taken = _measure(True, calls, name, dims, neurons)
    want, _ = _measure(False, calls, name, dims, neurons)
    assert all(taken)
    _assert_same(got, want)


def test_dead_and_saturated_neurons_are_counted_exactly() -> None:
    """Whole columns at 0 (dead ReLU units), σ' below ε (saturated tanh), -0.0 entries."""
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    z[:, 2] = -1.0
    z[:, 5] = -0.0
    z[:, 6] = 30.0  # tanh'(30) = 0 in float32
    for name in ("relu", "tanh"):
        calls = [(None, ACTIVATIONS[name][0](z), torch.randn(64, 8))]
        got, taken = _measure(True, calls, name, (0,), 8)
        want, _ = _measure(False, calls, name, (0,), 8)
        assert taken == [True]
        _assert_same(got, want)
        dead = [2, 5] if name == "relu" else [6]
        assert (got.store["active_entries"][dead] == 0).all()


def test_a_derivative_equal_to_eps_is_not_above_it() -> None:
    """|σ'| > ε, strictly: LeakyReLU(0.01) under ε = 0.01 has every negative position inactive,
    in both layouts (rows of neurons, and runs of positions per neuron)."""
    config = ScanConfig(eps=0.01)
    for shape, dims in (((32, 6), (0,)), ((4, 6, 5), (0, 2))):
        z = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        calls = [(z, F.leaky_relu(z, 0.01), torch.randn(shape))]
        got, taken = _measure(True, calls, "leaky", dims, 6, config)
        want, _ = _measure(False, calls, "leaky", dims, 6, config)
        assert taken == [True]
        _assert_same(got, want)
        assert got.store["active_entries"].sum() == (z > 0).sum()


@pytest.mark.parametrize("eps", [1.0, 1.5])
@pytest.mark.parametrize("keep_z", [False, True])
def test_a_relu_site_under_eps_of_one_or_more_evaluates_sigma_prime(
    eps: float, keep_z: bool
) -> None:
    """σ' of a ReLU is 0 or 1: with ε ≥ 1 no position is active and every neuron is dead. The
    step shortcut (count a > 0) holds only for ε < 1; the C path asks the same question."""
    config = ScanConfig(eps=eps)
    calls = _calls("relu", (16, 6), seed=2, keep_z=keep_z)
    got, taken = _measure(True, calls, "relu", (0,), 6, config)
    want, _ = _measure(False, calls, "relu", (0,), 6, config)
    assert all(taken)
    _assert_same(got, want)
    assert got.store["active_entries"].sum() == 0 and not got.step
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    assert neurodiag.scan(model, [torch.randn(16, 4)], eps=eps).rows[0]["dead_pct"] == 100.0


@pytest.mark.parametrize(
    ("name", "where"),
    [(name, where) for name in ACTIVATIONS for where in ("a", "z", "grad")
     if (name, where) != ("tanh", "z")],  # σ' of tanh reads a only
)  # fmt: skip
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_entry_folds_nothing_and_the_exact_path_counts_it(
    name: str, where: str, value: float
) -> None:
    calls = _calls(name, (16, 5), seed=11, keep_z=where == "z", n=2)
    z, a, g = calls[1]
    target = {"a": a, "z": z, "grad": g}[where]
    assert target is not None
    target[3, 2] = value
    got, taken = _measure(True, calls, name, (0,), 5)
    want, _ = _measure(False, calls, name, (0,), 5)
    if where != "grad":
        # -Inf in z under a ReLU gives a = 0: only z shows it, and the C path sees z too
        assert taken == [True, False]
    _assert_same(got, want)
    assert got.store["nonfinite"] >= 1


def test_threads_and_slices_give_the_same_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step sites and gradients split over 3 threads, σ' in slices of a few rows."""
    shape, dims = (12, 4, 5), (0, 2)
    for name, keep_z in SITES:
        calls = _calls(name, shape, seed=5, keep_z=keep_z)
        want, _ = _measure(False, calls, name, dims, 4)
        whole, _ = _measure(True, calls, name, dims, 4)
        monkeypatch.setattr(native_build, "PER_THREAD", 1)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
        monkeypatch.setattr(native_fold, "SLICE_ELEMENTS", 40)
        native_fold._PLANS.clear()
        split, taken = _measure(True, calls, name, dims, 4)
        plan = native_fold._plan(torch.Size(shape), dims, ACTIVATIONS[name][2])
        monkeypatch.undo()
        native_fold._PLANS.clear()
        assert all(taken) and plan is not None and len(plan[3]) > 1  # it was split
        _assert_same(split, want)
        _assert_same(whole, want)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    neurons=st.integers(1, 17),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(list(ACTIVATIONS)),
)
def test_any_values_give_the_pytorch_states(
    rows: int, neurons: int, scale: float, seed: int, name: str
) -> None:
    native_fold.ENABLED = True
    calls = _calls(name, (rows, neurons), seed=seed, keep_z=False, n=2, scale=scale)
    got, taken = _measure(True, calls, name, (0,), neurons)
    want, _ = _measure(False, calls, name, (0,), neurons)
    if all(taken):  # 1e30 may overflow σ's float32 sums: the PyTorch path then measures it
        _assert_same(got, want)


def test_what_the_c_path_leaves_to_pytorch() -> None:
    """float64, non-contiguous, a tensor subclass, an activation with neurons on two dims."""
    stats = _stats(ScanConfig(), 6)
    assert stats._native is not None
    relu = derivatives.relu
    a = torch.rand(8, 6)
    assert stats._native.forward(None, a, relu, (0,), True)
    assert not stats._native.forward(None, a.double(), relu, (0,), True)
    assert not stats._native.forward(None, torch.rand(6, 8).T, relu, (0,), True)
    assert not stats._native.forward(None, a.as_subclass(_Sub), relu, (0,), True)
    assert not stats._native.forward(None, torch.rand(2, 3, 4), relu, (0,), True)
    assert not stats._native.grad(torch.rand(1, 6).expand(8, 6), (0,))  # a stride-0 gradient
    assert _stats(ScanConfig(dead_window="batch"), 6)._native is None  # a per-call statistic
    assert SiteStats(6, torch.device("cpu"), torch.float64, ScanConfig())._native is None


class _Sub(Tensor):
    pass


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURODIAG_NATIVE", "0")
    native_fold.kernels.cache_clear()
    try:
        assert native_fold.kernels() is None
        assert "NEURODIAG_NATIVE=0" in native_fold.status()
        assert _stats(ScanConfig(), 4)._native is None
    finally:
        monkeypatch.delenv("NEURODIAG_NATIVE")
        native_fold.kernels.cache_clear()
    assert native_fold.status().startswith("fold kernels: ")


def test_a_copied_site_folds_into_its_own_states() -> None:
    """The C path holds the states, not their addresses: a deep copy folds into the copy."""
    import copy

    stats = _stats(ScanConfig(), 5)
    a = torch.rand(8, 5)
    stats.observe_forward(None, a, derivatives.relu, (0,), True)
    twin = copy.deepcopy(stats)
    before = stats.store["sum_abs_act"].clone()
    twin.observe_forward(None, a, derivatives.relu, (0,), True)
    twin.observe_grad(a, (0,))
    assert torch.equal(stats.store["sum_abs_act"], before)
    assert torch.equal(stats.store["sum_abs_grad"], torch.zeros(5))
    torch.testing.assert_close(twin.store["sum_abs_act"], 2 * before)


# -- the compiled path's packed states -------------------------------------------------------------
def test_packed_traced_states_fold_what_site_stats_folds() -> None:
    """``PackedSiteStates`` (the compiled path's usual sites: one tensor per reduction, the
    non-finite count per neuron) drains into the same states as ``SiteStats`` observing the same
    calls eagerly, poisoned ones included; the generic ``TracedSiteStates`` stays for the rest."""
    from neurodiag.stats.traced import PackedSiteStates, TracedSiteStates, traced_states

    for name, config in [(n, ScanConfig()) for n in ACTIVATIONS] + [("relu", ScanConfig(eps=1.5))]:
        fn, derivative, step = ACTIVATIONS[name]
        eager, graph = _stats(config, 5), _stats(config, 5)
        packed = traced_states(graph, derivative, step)
        assert isinstance(packed, PackedSiteStates)
        g = torch.Generator().manual_seed(4)
        for call in range(3):
            z = torch.randn(7, 5, generator=g) * 3
            grad = torch.randn(7, 5, generator=g)
            if call == 1:
                z[2, 3], grad[4, 1], grad[5, 1] = math.nan, math.inf, math.nan
            eager.observe_forward(z, fn(z), derivative, (0,), step)
            eager.observe_grad(grad, (0,))
            packed.observe_forward(z, fn(z), (0,))
            packed.observe_grad(grad, (0,))
        packed.drain_into(graph)
        packed.drain_into(graph)  # drained states are empty: folding them again changes nothing
        _assert_same(graph, eager)
        assert graph.store["nonfinite"] == 3
    batch = _stats(ScanConfig(dead_window="batch"), 5)  # a per-call statistic
    assert isinstance(traced_states(batch, derivatives.relu, True), TracedSiteStates)


def _split_in_child(queue: object) -> None:
    hits: list[int] = []
    native_build.map_parts(lambda k, lo, hi: hits.append(k), [(0, 1), (1, 2)])
    queue.put(sorted(hits))  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_runs_its_splits_on_its_own_pool() -> None:
    """A child forked after the pool started has none of its threads: work submitted to the
    parent's pool would never run (a hang); the child makes its own."""
    hits: list[int] = []
    native_build.map_parts(lambda k, lo, hi: hits.append(k), [(0, 1), (1, 2)])  # pool started
    assert sorted(hits) == [0, 1]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_split_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and queue.get(timeout=5) == [0, 1]


def test_generic_traced_states_of_a_relu_under_eps_of_one_or_more() -> None:
    """``TracedSiteStates`` (sites with a per-call statistic) decides the step shortcut as every
    path does: with ε ≥ 1 its max/min |σ'| are σ' measured, not derived from active counts."""
    from neurodiag.stats.traced import TracedSiteStates, traced_states

    config = ScanConfig(eps=1.5, dead_window="batch")
    eager, graph = _stats(config, 4), _stats(config, 4)
    traced = traced_states(graph, derivatives.relu, True)
    assert isinstance(traced, TracedSiteStates)
    z = torch.randn(9, 4, generator=torch.Generator().manual_seed(3))
    z[:, 1] = 2.0  # every position active by sign: min |σ'| is 1 there
    eager.observe_forward(z, torch.relu(z), derivatives.relu, (0,), True)
    traced.observe_forward(z, torch.relu(z), (0,))
    traced.drain_into(graph)
    graph.flush()  # what a report reads: step sites' max/min |σ'| are derived here
    eager.flush()
    for name in ("max_abs_deriv", "min_abs_deriv", "active_entries"):
        assert torch.equal(graph.store[name], eager.store[name]), name
    assert float(graph.store["min_abs_deriv"][1]) == 1.0


def _fold_all(calls: list[tuple[Tensor | None, Tensor, Tensor]], dims: tuple[int, ...],
              neurons: int, keep_z: bool) -> tuple[SiteStats, list[bool]]:  # fmt: skip
    """Every call through the hot path (``step_folder`` / ``grad_folder``), as the recorder's lean
    hooks feed a ReLU site, falling back to observe_* where it declines."""
    stats = _stats(ScanConfig(), neurons)
    shape = calls[0][1].shape
    forward = stats.step_folder(shape, dims, keep_z)
    grad = stats.grad_folder(shape, dims)
    assert forward is not None and grad is not None
    taken = []
    for z, a, g in calls:
        taken.append(forward(z if keep_z else a))
        if not taken[-1]:
            stats.observe_forward(z, a, derivatives.relu, dims, True)
        if not grad(g):
            stats.observe_grad(g, dims)
    return stats, taken


@pytest.mark.parametrize("keep_z", [False, True])
@pytest.mark.parametrize(("shape", "dims"), LAYOUTS)
def test_the_hot_path_folds_what_observe_folds(
    keep_z: bool, shape: tuple[int, ...], dims: tuple[int, ...]
) -> None:
    calls = _calls("relu", shape, seed=3 + keep_z, keep_z=keep_z)
    neurons = _neurons(shape, dims)
    got, taken = _fold_all(calls, dims, neurons, keep_z)
    want, _ = _measure(False, calls, "relu", dims, neurons)
    assert all(taken) and got.step
    _assert_same(got, want)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_the_hot_path_folds_nothing_of_a_non_finite_call(bad: float) -> None:
    calls = _calls("relu", (8, 5), seed=11, keep_z=True)
    z, _, g = calls[1]
    assert z is not None
    z[2, 3] = bad
    g[4, 1] = bad
    calls[1] = (z, torch.relu(z), g)
    got, taken = _fold_all(calls, (0,), 5, keep_z=True)
    want, _ = _measure(False, calls, "relu", (0,), 5)
    assert taken == [True, False, True]
    _assert_same(got, want)


def test_the_hot_path_declines_what_it_was_not_built_for(monkeypatch: pytest.MonkeyPatch) -> None:
    stats = _stats(ScanConfig(), 5)
    fold = stats.grad_folder(torch.Size((8, 5)), (0,))
    assert fold is not None
    before = [value.clone() for _, value in stats.store.items()]
    assert not fold(torch.randn(9, 5))  # another shape
    assert not fold(torch.randn(8, 5, dtype=torch.float64))
    assert not fold(torch.randn(5, 8).t())  # not contiguous
    assert not fold(torch.nn.Parameter(torch.randn(8, 5)))  # a subclass
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # the plan was made for another thread count
    try:
        assert not fold(torch.randn(8, 5))
    finally:
        torch.set_num_threads(threads)
    native_fold.ENABLED = False
    assert not fold(torch.randn(8, 5))
    native_fold.ENABLED = True
    for (name, value), old in zip(stats.store.items(), before, strict=True):
        assert torch.equal(value, old), name
    assert fold(torch.randn(8, 5))
    # a split call (many threads, a large tensor) or a site kept on PyTorch's path: no hot path
    assert _stats(ScanConfig(eps=1.5), 5).step_folder(torch.Size((8, 5)), (0,), True) is None
    monkeypatch.setattr(native_build, "parts", lambda lead, numel: [(0, 4), (4, 8)])
    native_fold._PLANS.clear()
    assert stats.grad_folder(torch.Size((8, 5)), (0,)) is None
    native_fold._PLANS.clear()


def test_the_hot_path_folds_from_any_thread() -> None:
    """Each thread folds through its own accumulator buffer (DataParallel replicas, backward
    threads); the states get every call."""
    calls = _calls("relu", (16, 7), seed=5, keep_z=True, n=6)
    got = _stats(ScanConfig(), 7)
    grad = got.grad_folder(torch.Size((16, 7)), (0,))
    assert grad is not None
    done: list[bool] = []
    for k, (_, _, g) in enumerate(calls):
        if k % 2:
            worker = threading.Thread(target=lambda g=g: done.append(grad(g)))
            worker.start()
            worker.join()
        else:
            done.append(grad(g))
    want = _stats(ScanConfig(), 7)
    native_fold.ENABLED = False
    for _, _, g in calls:
        want.observe_grad(g, (0,))
    native_fold.ENABLED = True
    assert all(done) and len(done) == len(calls)
    got.flush()
    want.flush()
    for name in ("grad_finite_positions", "sum_abs_grad"):
        torch.testing.assert_close(got.store[name], want.store[name], rtol=3e-6, atol=1e-6)
