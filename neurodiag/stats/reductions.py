"""The per-call reductions every statistic reads: one measuring path per observation kind.

A site call is reduced to per-neuron values over its **finite positions** (an entry is finite
when z and a, or ∂L/∂a, are neither NaN nor ±Inf): Σ|a|, the finite positions, the positions with
|σ'| > ε, max and min of |σ'|; Σ|∂L/∂a| and its finite positions; and the count of non-finite
entries. Non-finite entries are counted and kept out of everything else.

``exact_forward`` / ``exact_grad`` are the reference: masks, σ' in slices along a position dim
(so σ's temporaries stay O(slice) whatever the activation size). Two shortcuts sit behind the same
interface, each pinned to the reference by tests/test_reductions.py:

* **finite-proved** (CPU only, where reading a scalar costs no device synchronisation): NaN
  propagates through sums and ±Inf survives them, so a finite Σ|a| + Σz (+ Σ of the σ' extremes)
  proves the call clean and the masks are skipped; otherwise the call is measured again exactly.
  Accelerators always take the exact path: no host read per call.
* **step** (ReLU: σ' = [z > 0], a ≥ 0, ε < 1): |σ'| > ε exactly where a > 0, so the active count
  is Σ[a > 0] and σ' is never evaluated; the per-neuron max/min of σ' follow from the totals
  (``step_extremes``), so they are derived once per read, not once per call.

On CPU the temporaries go to a per-thread scratch buffer reused from call to call (fresh pages
from the OS cost more than the ops that fill them); ``release_scratch`` drops it on detach.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DerivativeFn = Callable[[Tensor | None, Tensor], Tensor]

#: Elements per slice of the exact path and of σ' on the finite-proved path.
SLICE_ELEMENTS = 1 << 16
#: Tensors up to this size (elements) use the scratch whole; larger ones are reduced slice by
#: slice (``slice_elements``: at most 4x this, 1 MB in float32), so extra peak memory stays
#: O(slice) whatever the activation size.
SCRATCH_LIMIT = 1 << 16
#: Devices on which a per-call host read is free (no device synchronisation).
HOST_READ_DEVICES = frozenset({"cpu"})
#: The ReLU step shortcut (``benchmarks/overhead.py --measure-path no-step`` switches it off).
STEP_SHORTCUT = True


@dataclass(slots=True)
class ForwardReductions:
    """One forward call, per neuron, over its finite positions.

    ``finite_positions`` is a host int when every position was finite (the common case);
    ``max_abs_deriv``/``min_abs_deriv`` are None on the step shortcut (see ``step_extremes``).
    """

    finite_positions: Tensor | int
    sum_abs_act: Tensor
    active_entries: Tensor
    max_abs_deriv: Tensor | None
    min_abs_deriv: Tensor | None
    nonfinite: Tensor | int


@dataclass(slots=True)
class GradReductions:
    """One gradient ∂L/∂a, per neuron, over its finite positions."""

    grad_finite_positions: Tensor | int
    sum_abs_grad: Tensor
    nonfinite: Tensor | int


# -- scratch -------------------------------------------------------------------------------------
class _Pool(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, Tensor] = {}
        self.views: dict[tuple[torch.dtype, torch.Size], Tensor] = {}


_POOL = _Pool()


def release_scratch() -> None:
    """Drop this thread's scratch buffers (the recorder calls it when it detaches)."""
    _POOL.buffers.clear()
    _POOL.views.clear()


def _scratch(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A CPU temporary shaped like ``like`` from the per-thread pool (valid until the next call).

    Views are cached per shape: slicing and viewing cost more than the op that fills them.
    """
    key = (dtype or like.dtype, like.shape)
    view = _POOL.views.get(key)
    if view is not None:
        return view
    n = like.numel()
    buffer = _POOL.buffers.get(key[0])
    if buffer is None or buffer.numel() < n:
        buffer = _POOL.buffers[key[0]] = torch.empty(n, dtype=key[0])
        _POOL.views.clear()
    if len(_POOL.views) >= 64:  # many shapes (variable lengths): keep the cache small
        _POOL.views.clear()
    view = _POOL.views[key] = buffer[:n].view(like.shape)
    return view


# -- shapes ---------------------------------------------------------------------------------------
def _as_positions(
    z: Tensor | None, a: Tensor, dims: tuple[int, ...]
) -> tuple[Tensor | None, Tensor, tuple[int, ...]]:
    """A call with no position dim (0-d or (F,)) seen as one position: shape (1, F), dims (0,)."""
    if dims:
        return z, a, dims
    return (z.reshape(1, -1) if z is not None else None), a.reshape(1, -1), (0,)


def _slices(
    z: Tensor | None, a: Tensor, dims: tuple[int, ...]
) -> list[tuple[Tensor | None, Tensor]]:
    """(z, a) cut along dim 0 (a position dim) into slices of about ``slice_elements(n)``."""
    n = a.numel()
    rows = a.shape[0]
    if n <= SLICE_ELEMENTS or 0 not in dims or rows <= 1:
        return [(z, a)]
    step = max(1, slice_elements(n) // max(1, n // rows))
    return [
        (z[i : i + step] if z is not None else None, a[i : i + step]) for i in range(0, rows, step)
    ]


def slice_elements(numel: int) -> int:
    """Elements per slice of a ``numel``-element tensor: 1/16 of it, within 1x-4x
    ``SLICE_ELEMENTS`` (big activations get bigger slices: fewer ops, ~40 % faster on 2M-element
    conv activations, while the scratch stays a small fraction of the activation)."""
    return max(SLICE_ELEMENTS, min(4 * SLICE_ELEMENTS, numel // 16))


def _positions(shape: torch.Size, dims: tuple[int, ...]) -> int:
    out = 1
    for i in dims:
        out *= shape[i]
    return out


def _combine(parts: list[Tensor], op: Callable[..., Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else op(torch.stack(parts), 0)


def _in_scratch(
    x: Tensor, dims: tuple[int, ...], dtype: torch.dtype, op: Callable[..., Tensor]
) -> Tensor:
    """Σ over ``dims`` of ``op(x, out=...)`` in ``dtype``, the elementwise result in the scratch.

    Large tensors go slice by slice (the scratch never exceeds 4x ``SCRATCH_LIMIT``); one that
    cannot be sliced that finely along a position dim gets an ordinary temporary.
    """
    out_dtype = dtype if op is not torch.abs else x.dtype
    if x.numel() <= SCRATCH_LIMIT:
        return op(x, out=_scratch(x, out_dtype)).sum(dims, dtype=dtype)
    pieces = _slices(None, x, dims)
    if len(pieces) == 1 or pieces[0][1].numel() > 4 * SCRATCH_LIMIT:
        return op(x, out=torch.empty_like(x, dtype=out_dtype)).sum(dims, dtype=dtype)
    parts = [op(c, out=_scratch(c, out_dtype)).sum(dims, dtype=dtype) for _, c in pieces]
    return _combine(parts, torch.sum)


# -- forward ---------------------------------------------------------------------------------------
def reduce_forward(
    z: Tensor | None,
    a: Tensor,
    derivative: DerivativeFn,
    dims: tuple[int, ...],
    eps: float,
    dtype: torch.dtype,
    step: bool = False,
) -> ForwardReductions:
    """The reductions of one forward call (``z`` None: an in-place op overwrote it)."""
    z, a, dims = _as_positions(z, a, dims)
    if a.is_cpu and "cpu" in HOST_READ_DEVICES:
        quick = (
            _quick_step(z, a, dims, dtype)
            if step and eps < 1 and STEP_SHORTCUT
            else _quick_general(z, a, derivative, dims, eps, dtype)
        )
        if quick is not None:
            return quick
    return exact_forward(z, a, derivative, dims, eps, dtype)


def exact_forward(
    z: Tensor | None,
    a: Tensor,
    derivative: DerivativeFn,
    dims: tuple[int, ...],
    eps: float,
    dtype: torch.dtype,
) -> ForwardReductions:
    """The reference: masks of the finite entries, σ' in slices. No host read."""
    z, a, dims = _as_positions(z, a, dims)
    parts = [_masked(zc, ac, derivative, dims, eps, dtype) for zc, ac in _slices(z, a, dims)]
    if len(parts) == 1:
        return parts[0]
    nonfinite = torch.zeros((), dtype=torch.int64, device=a.device)
    for part in parts:
        nonfinite = nonfinite + part.nonfinite
    return ForwardReductions(
        finite_positions=_combine([p.finite_positions for p in parts], torch.sum),  # type: ignore[misc]
        sum_abs_act=_combine([p.sum_abs_act for p in parts], torch.sum),
        active_entries=_combine([p.active_entries for p in parts], torch.sum),
        max_abs_deriv=_combine([p.max_abs_deriv for p in parts], torch.amax),  # type: ignore[misc]
        min_abs_deriv=_combine([p.min_abs_deriv for p in parts], torch.amin),  # type: ignore[misc]
        nonfinite=nonfinite,
    )


def _masked(
    z: Tensor | None,
    a: Tensor,
    derivative: DerivativeFn,
    dims: tuple[int, ...],
    eps: float,
    dtype: torch.dtype,
) -> ForwardReductions:
    """The exact reductions of one piece: masks of the finite entries, σ' of the clean values."""
    ok = torch.isfinite(a)
    if z is not None:
        ok &= torch.isfinite(z)
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    clean_a = torch.where(ok, a, zero)
    clean_z = torch.where(ok, z, zero) if z is not None else None
    d = derivative(clean_z, clean_a).abs().to(dtype)
    return ForwardReductions(
        finite_positions=ok.sum(dims, dtype=dtype),
        sum_abs_act=clean_a.abs().sum(dims, dtype=dtype),
        active_entries=(ok & (d > eps)).sum(dims, dtype=dtype),
        max_abs_deriv=torch.where(ok, d, -math.inf).amax(dims),
        min_abs_deriv=torch.where(ok, d, math.inf).amin(dims),
        nonfinite=ok.numel() - ok.sum(),
    )


def traced_forward(
    z: Tensor | None,
    a: Tensor,
    derivative: DerivativeFn,
    dims: tuple[int, ...],
    eps: float,
    dtype: torch.dtype,
    step: bool = False,
) -> ForwardReductions:
    """The exact reductions written for Dynamo: no host read, no slicing, every value a tensor.

    Inside a ``torch.compile``d step Inductor fuses these into a few loops over the activation
    (no mask is materialised), which is why the Monitor measures compiled code this way
    (``neurodiag.monitor.graph``). Step sites (ReLU) skip σ': with the non-finite entries
    masked out, |σ'| > ε exactly where a > 0, and the per-neuron max/min of σ' follow from the
    totals (``step_extremes``) as on the eager step shortcut.
    """
    z, a, dims = _as_positions(z, a, dims)
    if not (step and eps < 1 and STEP_SHORTCUT):
        return _masked(z, a, derivative, dims, eps, dtype)
    ok = torch.isfinite(a)
    if z is not None:
        ok &= torch.isfinite(z)
    finite = ok.sum(dims, dtype=dtype)
    clean = torch.where(ok, a, torch.zeros((), dtype=a.dtype, device=a.device))
    return ForwardReductions(
        finite_positions=finite,
        sum_abs_act=clean.sum(dims, dtype=dtype),  # a = max(z, 0) >= 0 where finite
        active_entries=(clean > 0).sum(dims, dtype=dtype),
        max_abs_deriv=None,
        min_abs_deriv=None,
        nonfinite=ok.numel() - finite.sum(dtype=torch.float64).to(torch.int64),  # no 2nd pass
    )


def _finite(per_neuron: Tensor, whole: Tensor | None = None) -> bool:
    """The one host read of a finite-proved call: are these reductions finite?

    NaN propagates through sums and ±Inf survives them (+Inf + -Inf is NaN), so a finite total
    proves every summed entry finite; an overflowing sum only sends the call to the exact path.
    """
    total = per_neuron.sum() if per_neuron.dim() else per_neuron
    if whole is not None:
        total = total + whole
    return math.isfinite(float(total))


def _quick_step(
    z: Tensor | None, a: Tensor, dims: tuple[int, ...], dtype: torch.dtype
) -> ForwardReductions | None:
    """ReLU on CPU: Σa and Σ[a > 0] per neuron; None if a non-finite entry may be there."""
    sum_abs = a.sum(dims, dtype=dtype)
    # a = max(z, 0): z finite means a finite, so z alone is checked when there is one (-Inf in z
    # gives a = 0, which Σa would not show); else NaN/+Inf in a make Σa non-finite.
    if not (_finite(z.sum()) if z is not None else _finite(sum_abs)):
        return None
    active = _in_scratch(a, dims, dtype, lambda x, out: torch.gt(x, 0, out=out))
    return ForwardReductions(
        finite_positions=_positions(a.shape, dims),
        sum_abs_act=sum_abs,
        active_entries=active,
        max_abs_deriv=None,
        min_abs_deriv=None,
        nonfinite=0,
    )


def _quick_general(
    z: Tensor | None,
    a: Tensor,
    derivative: DerivativeFn,
    dims: tuple[int, ...],
    eps: float,
    dtype: torch.dtype,
) -> ForwardReductions | None:
    """Any σ on CPU without masks; None if a non-finite entry may be there."""
    sum_abs = _in_scratch(a, dims, dtype, torch.abs)
    highs: list[Tensor] = []
    lows: list[Tensor] = []
    active: list[Tensor] = []
    for zc, ac in _slices(z, a, dims):
        d = derivative(zc, ac)
        d = d.abs() if d is zc or d is ac else d.abs_()
        highs.append(torch.amax(d, dims))
        lows.append(torch.amin(d, dims))
        active.append(torch.gt(d, eps, out=d).sum(dims, dtype=dtype))
    high, low = _combine(highs, torch.amax), _combine(lows, torch.amin)
    # Σ|a|, Σz, and the σ' extremes (a NaN σ' of a finite input would otherwise pass unseen)
    whole = high.sum() + low.sum()
    if z is not None:
        whole = whole + z.sum()
    if not _finite(sum_abs, whole):
        return None
    return ForwardReductions(
        finite_positions=_positions(a.shape, dims),
        sum_abs_act=sum_abs,
        active_entries=_combine(active, torch.sum),
        max_abs_deriv=high.to(dtype),
        min_abs_deriv=low.to(dtype),
        nonfinite=0,
    )


def step_extremes(active: Tensor, finite: Tensor) -> tuple[Tensor, Tensor]:
    """max and min of σ' = [z > 0] per neuron from the totals of a step site.

    max is 1 where some finite position was active, 0 where all were inactive; min is 0 where
    some finite position was inactive, else 1; both are empty (-inf / +inf) without any finite
    position, as the exact path's masked reductions are.
    """
    measured = finite > 0
    one, zero = torch.ones_like(active), torch.zeros_like(active)
    high = torch.where(active > 0, one, zero)
    low = torch.where(active < finite, zero, one)
    high = torch.where(measured, high, torch.full_like(active, -math.inf))
    low = torch.where(measured, low, torch.full_like(active, math.inf))
    return high, low


# -- gradient ------------------------------------------------------------------------------------
def reduce_grad(grad: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> GradReductions:
    """The reductions of one ∂L/∂a."""
    _, grad, dims = _as_positions(None, grad, dims)
    if grad.is_cpu and "cpu" in HOST_READ_DEVICES:
        total = _in_scratch(grad, dims, dtype, torch.abs)
        if _finite(total):
            return GradReductions(_positions(grad.shape, dims), total, 0)
    return exact_grad(grad, dims, dtype)


def exact_grad(grad: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> GradReductions:
    """The reference: Σ|∂L/∂a| and the count over finite entries. No host read."""
    _, grad, dims = _as_positions(None, grad, dims)
    ok = torch.isfinite(grad)
    clean = torch.where(ok, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    return GradReductions(
        grad_finite_positions=ok.sum(dims, dtype=dtype),
        sum_abs_grad=clean.abs().sum(dims, dtype=dtype),
        nonfinite=ok.numel() - ok.sum(),
    )
