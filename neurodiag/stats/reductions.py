"""The per-call reductions every statistic reads: one measuring path per observation kind.

A site call is reduced to per-neuron values over its **finite positions** (an entry is finite
when z and a, or ∂L/∂a, are neither NaN nor ±Inf): Σ|a|, max |a|, the finite positions, the
positions with |σ'| > ε, max and min of |σ'|; Σ|∂L/∂a| and its finite positions; and the count of
non-finite entries. Non-finite entries are counted and kept out of everything else. Only when the
representation rank is asked for (``gram=True``): the call's Gram matrix AᵀA in float64 over its
finite rows (``gram_of``), O(neurons²).

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


def step_shortcut(step: bool, eps: float) -> bool:
    """Whether a call of a step site (ReLU) is measured by the step shortcut: only for ε < 1,
    where |σ'| > ε is exactly a > 0 (σ' is 0 or 1); with ε ≥ 1 no position is active, and σ'
    is evaluated like any other site's. Every measuring path asks this one question."""
    return step and eps < 1 and STEP_SHORTCUT


@dataclass(slots=True)
class ForwardReductions:
    """One forward call, per neuron, over its finite positions.

    ``finite_positions`` is a host int when every position was finite (the common case);
    ``max_abs_deriv``/``min_abs_deriv`` are None on the step shortcut (see ``step_extremes``).
    ``max_abs_act`` is 0 for a neuron without a finite position (statistics mask it with
    ``finite_positions``). ``gram``/``gram_rows`` (the (F, F) float64 AᵀA over the finite rows,
    and how many rows) are None unless asked for.
    """

    finite_positions: Tensor | int
    sum_abs_act: Tensor
    active_entries: Tensor
    max_abs_deriv: Tensor | None
    min_abs_deriv: Tensor | None
    nonfinite: Tensor | int
    max_abs_act: Tensor
    gram: Tensor | None = None
    gram_rows: Tensor | None = None


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


def _amax(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``x.amax(dims)``, the trailing dims first when the neurons sit before them (conv
    (N, C, H, W): max over (H, W), then N): CPU reduces contiguous inner dims vectorised, up to
    1.5x faster than one amax over (0, 2, 3)."""
    split, last = len(dims), x.dim() - 1
    while split and dims[split - 1] == last - (len(dims) - split):  # dims[split:] are trailing
        split -= 1
    if 0 < split < len(dims):
        return x.amax(dims[split:]).amax(dims[:split])
    return x.amax(dims)


#: Same-size integer dtypes: IEEE floats ≥ 0 (and -0.0, the smallest) order as their bits do.
_BITS = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _max_nonnegative(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``_amax`` of a finite ``x`` ≥ 0 (a ReLU's output); large ones as integers, which CPU
    reduces up to 2x faster than floats. -0.0 (relu(-0.0)) may come back for a neuron that is
    -0.0 everywhere: statistics read max |a| through ``abs``."""
    bits = _BITS.get(x.dtype)
    if bits is None or x.numel() <= SCRATCH_LIMIT:
        return _amax(x, dims)
    return _amax(x.view(bits), dims).view(x.dtype)


def _abs_sum_max(x: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Σ|x| (in ``dtype``) and max |x| over ``dims`` from one |x| in the scratch (as
    ``_in_scratch``): the max reads what the sum just read, still in cache."""
    if x.numel() <= SCRATCH_LIMIT:
        t = torch.abs(x, out=_scratch(x))
        return t.sum(dims, dtype=dtype), _amax(t, dims)
    pieces = _slices(None, x, dims)
    if len(pieces) == 1 or pieces[0][1].numel() > 4 * SCRATCH_LIMIT:
        t = x.abs()
        return t.sum(dims, dtype=dtype), _amax(t, dims)
    sums: list[Tensor] = []
    highs: list[Tensor] = []
    for _, c in pieces:
        t = torch.abs(c, out=_scratch(c))
        sums.append(t.sum(dims, dtype=dtype))
        highs.append(_amax(t, dims))
    return _combine(sums, torch.sum), _combine(highs, torch.amax)


# -- forward ---------------------------------------------------------------------------------------
def reduce_forward(
    z: Tensor | None,
    a: Tensor,
    derivative: DerivativeFn,
    dims: tuple[int, ...],
    eps: float,
    dtype: torch.dtype,
    step: bool = False,
    gram: bool = False,
) -> ForwardReductions:
    """The reductions of one forward call (``z`` None: an in-place op overwrote it); with
    ``gram`` also the call's Gram matrix (``gram_of``)."""
    z, a, dims = _as_positions(z, a, dims)
    if a.numel() == 0:  # no position (a batch of 0 rows): nothing to fold, no max to take
        return _no_positions(a, dims, dtype)
    red = None
    if a.is_cpu and "cpu" in HOST_READ_DEVICES:
        red = (
            _quick_step(z, a, dims, dtype)
            if step_shortcut(step, eps)
            else _quick_general(z, a, derivative, dims, eps, dtype)
        )
    if red is None:
        red = exact_forward(z, a, derivative, dims, eps, dtype)
    if gram:
        red.gram, red.gram_rows = gram_of(z, a, dims)
    return red


def _no_positions(a: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> ForwardReductions:
    """The reductions of a call without positions: zero counts and sums, empty extremes
    (-inf / +inf, which fold as nothing; None would read as the step shortcut)."""
    shape = [n for i, n in enumerate(a.shape) if i not in dims]
    zeros = torch.zeros(shape, dtype=dtype, device=a.device)
    return ForwardReductions(
        finite_positions=0,
        sum_abs_act=zeros,
        active_entries=zeros,
        max_abs_deriv=torch.full_like(zeros, -math.inf),
        min_abs_deriv=torch.full_like(zeros, math.inf),
        nonfinite=0,
        max_abs_act=zeros,
    )


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
        max_abs_act=_combine([p.max_abs_act for p in parts], torch.amax),
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
    abs_a = clean_a.abs()
    return ForwardReductions(
        finite_positions=ok.sum(dims, dtype=dtype),
        sum_abs_act=abs_a.sum(dims, dtype=dtype),
        active_entries=(ok & (d > eps)).sum(dims, dtype=dtype),
        max_abs_deriv=torch.where(ok, d, -math.inf).amax(dims),
        min_abs_deriv=torch.where(ok, d, math.inf).amin(dims),
        nonfinite=ok.numel() - ok.sum(),
        max_abs_act=abs_a.amax(dims).to(dtype),  # 0 where no position is finite
    )


def traced_forward(
    z: Tensor | None,
    a: Tensor,
    derivative: DerivativeFn,
    dims: tuple[int, ...],
    eps: float,
    dtype: torch.dtype,
    step: bool = False,
    gram: bool = False,
) -> ForwardReductions:
    """The exact reductions written for Dynamo: no host read, no slicing, every value a tensor.

    Inside a ``torch.compile``d step Inductor fuses these into a few loops over the activation
    (no mask is materialised), which is why the Monitor measures compiled code this way
    (``neurodiag.monitor.graph``). Step sites (ReLU) skip σ': with the non-finite entries
    masked out, |σ'| > ε exactly where a > 0, and the per-neuron max/min of σ' follow from the
    totals (``step_extremes``) as on the eager step shortcut.
    """
    z, a, dims = _as_positions(z, a, dims)
    if step_shortcut(step, eps):
        red = _traced_step(z, a, dims, dtype)
    else:
        red = _masked(z, a, derivative, dims, eps, dtype)
    if gram:
        red.gram, red.gram_rows = gram_of(z, a, dims, traced=True)
    return red


def _traced_step(
    z: Tensor | None, a: Tensor, dims: tuple[int, ...], dtype: torch.dtype
) -> ForwardReductions:
    """``traced_forward`` of a ReLU site: no σ', a ≥ 0 where finite. With z kept, everything is
    read from z (a = max(z, 0) exactly; z finite means a finite): one input for the fused loop."""
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    if z is not None:
        ok = torch.isfinite(z)
        clean = torch.where(ok, z.clamp_min(0), zero)
    else:
        ok = torch.isfinite(a)
        clean = torch.where(ok, a, zero)
    finite = ok.sum(dims, dtype=dtype)
    return ForwardReductions(
        finite_positions=finite,
        sum_abs_act=clean.sum(dims, dtype=dtype),  # a = max(z, 0) >= 0 where finite
        active_entries=(clean > 0).sum(dims, dtype=dtype),
        max_abs_deriv=None,
        min_abs_deriv=None,
        nonfinite=ok.numel() - finite.sum(dtype=torch.float64).to(torch.int64),  # no 2nd pass
        max_abs_act=clean.amax(dims).to(dtype),
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
    high = _max_nonnegative(a, dims)
    return ForwardReductions(
        finite_positions=_positions(a.shape, dims),
        sum_abs_act=sum_abs,
        active_entries=active,
        max_abs_deriv=None,
        min_abs_deriv=None,
        nonfinite=0,
        max_abs_act=high if high.dtype == dtype else high.to(dtype),  # a ≥ 0: |a| = a
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
    sum_abs, max_abs = _abs_sum_max(a, dims, dtype)
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
        max_abs_act=max_abs if max_abs.dtype == dtype else max_abs.to(dtype),
    )


def step_extremes(active: Tensor, finite: Tensor) -> tuple[Tensor, Tensor]:
    """max and min of σ' = [z > 0] per neuron from the totals of a step site.

    max is 1 where some finite position was active, 0 where all were inactive; min is 0 where
    some finite position was inactive, else 1; both are empty (-inf / +inf) without any finite
    position, as the exact path's masked reductions are.
    """
    measured = finite > 0
    high = torch.where(measured, (active > 0).to(active.dtype), -math.inf)
    low = torch.where(measured, (active >= finite).to(active.dtype), math.inf)
    return high, low


# -- representation rank ---------------------------------------------------------------------
#: Elements (float64) per row block of ``gram_of``: its temporaries stay O(block), 2 MB.
GRAM_BLOCK_ELEMENTS = 1 << 18


def _neuron_rows(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``x`` as a (positions, neurons) matrix: the one dim not in ``dims`` moved last."""
    feature = next(i for i in range(x.dim()) if i not in dims)
    return x.movedim(feature, -1).reshape(-1, x.shape[feature])


def gram_of(
    z: Tensor | None, a: Tensor, dims: tuple[int, ...], traced: bool = False
) -> tuple[Tensor, Tensor]:
    """AᵀA in float64 (A: rows = positions, columns = neurons) over the finite rows, and the
    number of those rows. A row with a non-finite entry (in a, or in z where kept) is left out
    whole: a singular value needs the whole row. ``a`` is (positions..., neurons) as
    ``_as_positions`` leaves it. Eager calls go in row blocks of ``GRAM_BLOCK_ELEMENTS``
    (temporaries O(block)); ``traced`` ones in one block (no Python loop for Dynamo)."""
    rows = _neuron_rows(a, dims)
    pre = _neuron_rows(z, dims) if z is not None else None
    n, neurons = rows.shape
    step = n if traced else max(1, GRAM_BLOCK_ELEMENTS // max(neurons, 1))
    gram = torch.zeros((neurons, neurons), dtype=torch.float64, device=a.device)
    kept = torch.zeros((), dtype=torch.float64, device=a.device)
    zero = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, n, step):
        block = rows[i : i + step]
        ok = torch.isfinite(block).all(1)
        if pre is not None:
            ok &= torch.isfinite(pre[i : i + step]).all(1)
        clean = torch.where(ok[:, None], block.to(torch.float64), zero)
        gram.addmm_(clean.T, clean)
        kept += ok.sum(dtype=torch.float64)
    return gram, kept


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
