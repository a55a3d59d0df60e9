"""The CPU fast path of a site's per-call reductions: ``fold_kernel.c``, one pass per tensor.

``reduce_forward`` / ``reduce_grad`` then ``StateStore.fold_fields`` cost 5-10 PyTorch ops per
call (Σ|a|, Σ[a > 0], max |a|, the finite check, one in-place fold per state), each ~3-10 µs of
dispatch on a small activation: on a 20-layer MLP of width 100 they were most of the Monitor's
cost. The C file makes the same reductions in one pass over a (and z, σ' where used) and folds
them into the states in place: one ctypes call per tensor (``nd_fold``) for a call taken whole
on one thread, the usual case; a reduce per part plus a commit when a call is split.

Same numbers as the PyTorch path (tests/test_native_fold.py): the same counts and extremes, and
the same per-neuron sums to float32 rounding (float32 over short blocks, added in double).
A call with a non-finite entry folds nothing and returns False: the caller measures it on the
PyTorch path, which counts and excludes those entries. Taken only on CPU for contiguous float32
tensors of plain ``torch.Tensor`` type whose neurons are one dim; anything else (accelerators, a
subclass, a fake tensor under torch.compile, float64, a per-call statistic, the Gram matrix) keeps
the PyTorch path. ``NEURODIAG_NATIVE=0`` or ``ENABLED = False`` switches it off.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

import neurodiag.native_build as native_build
from neurodiag.stats.base import StateStore

SOURCE = Path(__file__).with_name("fold_kernel.c")
#: The fast path (``benchmarks/overhead.py --measure-path no-native`` switches it off).
ENABLED = True
#: σ' is computed in row slices of about this many elements (its temporary stays O(slice)).
SLICE_ELEMENTS = 1 << 18
MODE_STEP, _MODE_GENERAL, MODE_GRAD, MODE_STEP_FROM_Z = 0, 1, 2, 3
#: The forward fields this path folds (ForwardReductions' names); any other keeps PyTorch's.
FORWARD_STATES = frozenset(
    {
        "finite_positions",
        "sum_abs_act",
        "active_entries",
        "max_abs_deriv",
        "min_abs_deriv",
        "nonfinite",
        "max_abs_act",
    }
)
GRAD_STATES = frozenset({"grad_finite_positions", "sum_abs_grad", "nonfinite"})


class Kernels:
    """The C entry points (sizes as int64_t)."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
        self.path = path
        lib.nd_acc_rows.restype = i32
        self.rows: int = lib.nd_acc_rows()
        self.reduce, self.commit = lib.nd_reduce, lib.nd_commit
        self.reduce.argtypes = [p, p, p, i64, i64, i64, i32, f32, p]
        self.reduce.restype = None
        self.commit.argtypes = [p, i64, i64, i32, i32, p, p, p, p, p]
        self.commit.restype = i32
        self.fold = lib.nd_fold
        self.fold.argtypes = [p, i64, i64, i64, i32, p, p, p, p]
        self.fold.restype = i32

    def __deepcopy__(self, memo: dict[int, object]) -> Kernels:
        return self  # one loaded library per process (ctypes functions cannot be copied)


#: The loaded kernels (call it), or None: switched off, or the build or load failed (status()).
kernels = native_build.NativeLibrary(
    SOURCE, "folds", Kernels, ("-fopenmp-simd", "-fno-trapping-math")
)


def status() -> str:
    """One line: where the fold kernels were loaded from, or why they are not in use."""
    return kernels.status("fold kernels")


def layout(shape: torch.Size, dims: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(A, F, B): a tensor of ``shape`` seen as (A, F, B) with its neurons F in the middle, when
    ``dims`` are all its dims but one (no position dim: one position of all neurons); else None."""
    if not dims:
        return 1, math.prod(shape), 1
    fd = [i for i in range(len(shape)) if i not in dims]
    if len(fd) != 1 or len(dims) != len(shape) - 1:
        return None
    return math.prod(shape[: fd[0]]), shape[fd[0]], math.prod(shape[fd[0] + 1 :])


def _fits(x: Tensor) -> bool:
    """A plain contiguous float32 CPU tensor (not a subclass: no fake or distributed tensor)."""
    return type(x) is Tensor and x.dtype == torch.float32 and x.is_cpu and x.is_contiguous()


class _Acc(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[tuple[int, int, int], Tensor] = {}


_ACC = _Acc()


def _accumulators(parts: int, rows: int, neurons: int) -> Tensor:
    """A per-thread float64 buffer for ``parts`` parts (the kernel overwrites it every call)."""
    key = (parts, rows, neurons)
    buffer = _ACC.buffers.get(key)
    if buffer is None:
        if len(_ACC.buffers) >= 64:
            _ACC.buffers.clear()
        buffer = _ACC.buffers[key] = torch.empty(key, dtype=torch.float64)
    return buffer


def _state(store: StateStore, name: str, dtype: torch.dtype) -> Tensor | None:
    if name not in store:
        return None
    value = store[name]
    if value.dtype != dtype or value.device.type != "cpu" or not value.is_contiguous():
        raise TypeError(name)
    return value


def _address(state: Tensor | None) -> int | None:
    """Read at every call, never kept: a copied store (``copy.deepcopy``) has its own tensors."""
    return None if state is None else state.data_ptr()


class NativeFold:
    """The fast path bound to one store's states (updated in place, never replaced)."""

    def __init__(self, lib: Kernels, store: StateStore, eps: float) -> None:
        f32, f64 = torch.float32, torch.float64
        self.lib = lib
        self.store = store
        self.eps = eps
        self.sum_abs_act = _state(store, "sum_abs_act", f32)
        self.active_entries = _state(store, "active_entries", f64)
        self.max_abs_act = _state(store, "max_abs_act", f32)
        self.max_abs_deriv = _state(store, "max_abs_deriv", f32)
        self.min_abs_deriv = _state(store, "min_abs_deriv", f32)
        self.sum_abs_grad = _state(store, "sum_abs_grad", f32)
        self.positions = "finite_positions" in store
        self.grad_positions = "grad_finite_positions" in store

    def _targets(self, mode: int) -> tuple[Tensor | None, Tensor | None, Tensor | None, str]:
        """What ``nd_fold`` writes for ``mode`` (sum, count, max; None: not kept) and the host
        count of its positions."""
        if mode == MODE_GRAD:
            return self.sum_abs_grad, None, None, "grad_finite_positions"
        return self.sum_abs_act, self.active_entries, self.max_abs_act, "finite_positions"

    def _start(self, x: Tensor, dims: tuple[int, ...], step: bool) -> tuple[Plan, int] | None:
        """The plan of a call on ``x`` and this thread's accumulators' address; None: the
        PyTorch path takes it."""
        if not (ENABLED and _fits(x)):
            return None
        plan = _plan(x.shape, dims, step)
        if plan is None:
            return None
        return plan, _accumulators(len(plan[3]), self.lib.rows, plan[1]).data_ptr()

    def _fold_whole(self, x: Tensor, plan: Plan, acc: int, mode: int) -> bool:
        """A call taken whole on this thread: one C call (``nd_fold``), then its positions."""
        _, neurons, inner, _, positions = plan
        sums, active, high, counted = self._targets(mode)
        if self.lib.fold(x.data_ptr(), positions // inner, neurons, inner, mode, acc,
                         _address(sums), _address(active), _address(high)):  # fmt: skip
            return False
        if counted in self.store:
            self.store.fold(counted, positions)
        return True

    def forward(
        self,
        z: Tensor | None,
        a: Tensor,
        derivative: Callable[[Tensor | None, Tensor], Tensor],
        dims: tuple[int, ...],
        step: bool,
    ) -> bool:
        """Fold one call into the states; False (nothing folded): use the PyTorch path.
        ``step``: the call takes the step shortcut (``reductions.step_shortcut``): a > 0 is
        counted, σ' never evaluated."""
        if z is not None and not (_fits(z) and z.shape == a.shape):
            return False
        started = self._start(a, dims, step)
        if started is None:
            return False
        plan, acc = started
        lib, (lead_rows, neurons, inner, ranges, positions) = self.lib, plan
        part_bytes = 8 * lib.rows * neurons
        # x: the tensor the pass reads, check: the one read for its finite check only. A step
        # site's a is max(z, 0) exactly: with z kept, one pass over z reads both.
        x, check, mode = a, z, MODE_STEP if step else _MODE_GENERAL
        if step and z is not None:
            x, check, mode = z, None, MODE_STEP_FROM_Z
        if step and len(ranges) == 1:  # the common case: one C call
            return self._fold_whole(x, plan, acc, mode)
        failed: list[bool] = []

        def run(k: int, first: int, last: int) -> None:
            whole = last - first == ranges[-1][1]
            piece_x = x if whole else x[first:last]
            piece_check = check if whole or check is None else check[first:last]
            d_ptr = None
            if not step:  # σ' of this piece (x is a, check is z)
                d = derivative(piece_check, piece_x)
                if not (_fits(d) and d.shape == piece_x.shape):
                    failed.append(True)
                    return
                d_ptr = d.data_ptr()
            lib.reduce(
                piece_x.data_ptr(),
                piece_check.data_ptr() if piece_check is not None else None,
                d_ptr,
                (last - first) * lead_rows,
                neurons,
                inner,
                mode,
                self.eps,
                acc + k * part_bytes,
            )

        if step:
            native_build.map_parts(run, ranges)
        else:  # σ' slice by slice, on this thread (its ops use PyTorch's threads)
            for k, (first, last) in enumerate(ranges):
                run(k, first, last)
        if failed:
            return False
        derivs = (None, None) if step else (self.max_abs_deriv, self.min_abs_deriv)
        states = map(_address, (self.sum_abs_act, self.active_entries, self.max_abs_act, *derivs))
        folded = not lib.commit(acc, len(ranges), neurons, z is not None, not step, *states)
        if folded and self.positions:
            self.store.fold("finite_positions", positions)
        return folded

    def folder(
        self, shape: torch.Size, dims: tuple[int, ...], mode: int
    ) -> Callable[[Tensor], bool] | None:
        """The hot path of one kind of call, or None: a step site's forward (``MODE_STEP``: x
        is a, ``MODE_STEP_FROM_Z``: x is z) or a gradient (``MODE_GRAD``) of ``shape``, taken
        whole on this thread. The returned fold(x) is what ``forward``/``grad`` do for such a
        call (same states, same C call) without their per-call planning; False (nothing folded):
        x is not such a call, a summed entry was non-finite, or the thread count changed, and the
        caller takes ``forward``/``grad``."""
        plan = _plan(shape, dims, True)
        if plan is None or len(plan[3]) != 1:
            return None
        _, neurons, inner, _, positions = plan
        lib, store, rows = self.lib, self.store, positions // inner
        sums, active, high, counted = self._targets(mode)
        counts = counted in store
        threads = torch.get_num_threads()
        get_threads, f32 = torch.get_num_threads, torch.float32

        def fold(x: Tensor) -> bool:
            if not (
                ENABLED
                and type(x) is Tensor
                and x.dtype == f32
                and x.is_cpu
                and x.is_contiguous()
                and x.shape == shape
                and get_threads() == threads
            ):
                return False
            acc = _accumulators(1, lib.rows, neurons).data_ptr()
            if lib.fold(x.data_ptr(), rows, neurons, inner, mode, acc, _address(sums),
                        _address(active), _address(high)):  # fmt: skip
                return False
            if counts:
                store.fold(counted, positions)
            return True

        return fold

    def grad(self, grad: Tensor, dims: tuple[int, ...]) -> bool:
        """Fold one ∂L/∂a into the states; False (nothing folded): use the PyTorch path."""
        started = self._start(grad, dims, True)
        if started is None:
            return False
        plan, acc = started
        lib, (lead_rows, neurons, inner, ranges, positions) = self.lib, plan
        if len(ranges) == 1:  # the common case: one C call
            return self._fold_whole(grad, plan, acc, MODE_GRAD)
        lead_bytes, part_bytes = 4 * lead_rows * neurons * inner, 8 * lib.rows * neurons

        def run(k: int, first: int, last: int) -> None:
            lib.reduce(grad.data_ptr() + first * lead_bytes, None, None,
                       (last - first) * lead_rows, neurons, inner, MODE_GRAD, 0,
                       acc + k * part_bytes)  # fmt: skip

        native_build.map_parts(run, ranges)
        folded = not lib.commit(acc, len(ranges), neurons, 0, 0, _address(self.sum_abs_grad),
                                None, None, None, None)  # fmt: skip
        if folded and self.grad_positions:
            self.store.fold("grad_finite_positions", positions)
        return folded


#: (rows of A per index of dim 0, F, B, ranges of dim 0, positions per neuron) per call shape
Plan = tuple[int, int, int, list[tuple[int, int]], int]
_PLANS: dict[tuple[torch.Size, tuple[int, ...], bool, int], Plan | None] = {}


def _plan(shape: torch.Size, dims: tuple[int, ...], step: bool) -> Plan | None:
    """How a call of ``shape`` is cut (cached): pieces along dim 0 (views of whole rows there)
    for the threads (step sites, gradients), or σ' slice by slice (other sites: its temporary stays
    O(slice)); one piece when the neurons are dim 0. None: the C path does not take it."""
    key = (shape, dims, step, torch.get_num_threads())
    if key in _PLANS:
        return _PLANS[key]
    found = layout(shape, dims)
    plan = None
    numel = math.prod(shape)
    if found is not None and numel:
        rows, neurons, inner = found
        lead = shape[0] if dims and 0 in dims else 1
        if step:
            ranges = native_build.parts(lead, numel)
        else:
            count = max(1, min(lead, -(-numel // SLICE_ELEMENTS)))
            ranges = [(lead * k // count, lead * (k + 1) // count) for k in range(count)]
        plan = (rows // lead, neurons, inner, ranges, rows * inner)
    if len(_PLANS) >= 256:  # many shapes (variable lengths): keep the cache small
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def bind(store: StateStore, forward: list[str], grad: list[str], eps: float) -> NativeFold | None:
    """The fast path for a store whose forward/grad fields it folds, or None (PyTorch's path)."""
    if not (set(forward) <= FORWARD_STATES and set(grad) <= GRAD_STATES):
        return None
    if store.device.type != "cpu" or store.dtype != torch.float32:
        return None
    lib = kernels()
    if lib is None:
        return None
    try:
        return NativeFold(lib, store, eps)
    except TypeError:  # a state of another dtype than this path writes
        return None
