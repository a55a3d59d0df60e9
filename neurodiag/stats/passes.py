"""The full-size passes of a site call, done with as little memory traffic as exactness allows.

Everything a site measures per call reduces a full activation (or gradient) tensor to per-neuron
or scalar values; the cost is the passes over the big tensor, plus, on CPU, the allocation of any
full-size temporary (fresh pages from the OS: a 100 KB temporary costs more than the op that fills
it). So, on CPU:

* temporaries (|∂L/∂a|, the 1-or-NaN marks of the non-finite count) go to a small per-thread
  scratch buffer that is reused from call to call (at most ``SCRATCH_ELEMENTS`` elements);
* tensors larger than that are swept in chunks along dim 0 (a position dim), so each chunk is
  read from memory once and the following passes over it hit the cache; per-chunk partial
  results (sums, mins, counts) are combined exactly (sums up to float rounding order).

Other devices (CUDA caching allocator) allocate temporaries normally and never chunk. The scratch
holds at most ``CHUNK_GROWTH * SCRATCH_ELEMENTS`` elements, and at most 1/``CHUNK_FRACTION`` of
the largest tensor swept (256 KB to 1 MB in float32), per dtype and thread, and only while
a recorder is attached (``release_scratch`` on detach): memory stays O(neurons) + a constant.

Most tensors have no NaN/±Inf at all, and the per-neuron reductions a site computes anyway say so:
NaN propagates through min, max and sum, and ±Inf survives them. Where reading a scalar on the
host costs no device synchronisation (``HOST_READ_DEVICES``: the CPU), a finite product or sum of
those reductions proves the count zero and the counting pass is skipped; otherwise (some entry
non-finite, or a sum that overflowed) the entries are counted exactly with ``count_nonfinite``.
On accelerators nothing is read back per call: the counts below are computed on the device.

Non-finite entries are counted as ``entries − finite`` with ``finite = nansum(1 + 0·x)``:
``1 + 0·x`` is 1 where x is finite and NaN at NaN/±Inf (0·Inf is NaN). One elementwise pass and
one plain float reduction, about twice as fast as ``count_nonzero(x − x)`` on CPU. A float sum of
ones is exact while every partial sum fits the mantissa (2**24 in float32, 2**53 in float64);
larger tensors fall back to ``count_nonzero(x − x)`` (exact int64).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: Size of the per-thread CPU scratch buffer and of the chunks of a sweep (elements).
SCRATCH_ELEMENTS = 1 << 16

#: Devices on which a per-call host read is free (no device synchronisation); see the docstring.
HOST_READ_DEVICES = frozenset({"cpu"})

#: Elements of z per evaluation of σ' on a large tensor: σ' (GELU, SiLU, ...) builds several
#: full-size temporaries, so it runs chunk by chunk and only per-neuron extremes are kept.
DERIVATIVE_CHUNK = 1 << 16

_EXACT_FLOAT_COUNT = {torch.float64: 2**53}
_FLOAT32_EXACT_COUNT = 2**24


class _Pool(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, Tensor] = {}
        self.views: dict[tuple[torch.dtype, torch.Size], Tensor] = {}
        self.ones: dict[tuple[torch.device, torch.dtype], Tensor] = {}


_POOL = _Pool()
_CPU = torch.device("cpu")


def release_scratch() -> None:
    """Drop this thread's scratch buffers (the recorder calls it when it detaches)."""
    _POOL.buffers.clear()
    _POOL.views.clear()


def _scratch(shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """A CPU temporary of ``shape`` from the per-thread pool (valid until the next call)."""
    view = _POOL.views.get((dtype, shape))
    if view is not None:
        return view
    n = shape.numel()
    buffer = _POOL.buffers.get(dtype)
    if buffer is None or buffer.numel() < n:
        buffer = _POOL.buffers[dtype] = torch.empty(n, dtype=dtype, device=_CPU)
        _POOL.views.clear()
    view = buffer[:n].view(shape)
    if len(_POOL.views) >= 64:  # many shapes (variable lengths): keep the cache small
        _POOL.views.clear()
    _POOL.views[(dtype, shape)] = view
    return view


def _one(device: torch.device, dtype: torch.dtype) -> Tensor:
    key = (device, dtype)
    one = _POOL.ones.get(key)
    if one is None:
        one = _POOL.ones[key] = torch.ones((), device=device, dtype=dtype)
    return one


def host_check(x: Tensor) -> bool:
    """Whether ``reductions_show_finite`` may be used for tensors on x's device."""
    return x.is_cpu and "cpu" in HOST_READ_DEVICES  # (x.device builds an object: slower)


def reductions_show_finite(first: Tensor, second: Tensor | None = None) -> bool:
    """True when per-neuron reductions prove the tensor they came from free of NaN/±Inf.

    ``first``/``second`` are reductions (min, max, or Σ of values ≥ 0) that between them see
    every non-finite entry of that tensor: a NaN or ±Inf entry makes one of them NaN or ±Inf,
    and then their dot product (or sum) is not finite (0·Inf is NaN). A finite result proves
    the count zero; a non-finite one (including a sum that merely overflowed) sends the caller to
    the exact count. Reads one scalar on the host: for ``host_check`` devices only.
    """
    if second is None:
        return math.isfinite(float(first.sum()))
    if first.dtype == second.dtype and first.dtype in _DOT_DTYPES and first.dim() == 1:
        return math.isfinite(float(torch.dot(first, second)))
    return math.isfinite(float(first.sum())) and math.isfinite(float(second.sum()))


_DOT_DTYPES = (torch.float32, torch.float64)


def count_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float dtype the finite entries of a ``dtype`` tensor are counted in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def float_count_is_exact(numel: int, dtype: torch.dtype) -> bool:
    """Whether ``finite_count`` of a tensor with ``numel`` entries of ``dtype`` is exact."""
    return numel <= _EXACT_FLOAT_COUNT.get(count_dtype(dtype), _FLOAT32_EXACT_COUNT)


def count_nonfinite(x: Tensor) -> Tensor:
    """Entries that are NaN or ±Inf (int64 scalar): x − x is NaN exactly there."""
    return torch.count_nonzero(x - x)


def _finite_in(x: Tensor, out: Tensor | None) -> Tensor:
    """nansum(1 + 0·x): the finite entries of x as an integer-valued float scalar."""
    dtype = x.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    one = _POOL.ones.get((_CPU, acc)) if x.is_cpu else None
    if one is None:
        one = _one(x.device, acc)
    # a 0-dim ``one`` does not promote x: the marks keep x's dtype (bf16 stays bf16)
    marks = torch.add(one, x, alpha=0) if out is None else torch.add(one, x, alpha=0, out=out)
    return torch.nansum(marks) if dtype == acc else torch.nansum(marks, dtype=acc)


def finite_in_scratch(x: Tensor) -> Tensor:
    """``finite_count`` of a small CPU tensor (≤ ``SCRATCH_ELEMENTS``), marks in the scratch."""
    return _finite_in(x, _scratch(x.shape, x.dtype))


def finite_in_place(x: Tensor) -> Tensor:
    """``finite_count`` of a temporary the caller owns (the marks overwrite it)."""
    return _finite_in(x, x)


def abs_in_scratch(x: Tensor) -> Tensor:
    """|x| of a small CPU tensor (≤ ``SCRATCH_ELEMENTS``) in the scratch buffer."""
    return torch.abs(x, out=_scratch(x.shape, x.dtype))


def finite_count(x: Tensor, *, overwrite: bool = False) -> Tensor | None:
    """Number of finite entries of ``x`` (integer-valued float scalar), or None if not exact.

    ``overwrite=True``: x is a temporary the caller owns; the marks are written into it.
    """
    if not float_count_is_exact(x.numel(), x.dtype):
        return None
    if overwrite:
        return _finite_in(x, x)
    if not x.is_cpu:
        return _finite_in(x, None)
    chunks = _chunks(x)
    if chunks is None:
        return _finite_in(x, None)
    parts = [_finite_in(c, _scratch(c.shape, c.dtype)) for c in chunks]
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


def chunk_elements(numel: int) -> int:
    """Elements per chunk of a sweep over a ``numel``-element tensor.

    ``SCRATCH_ELEMENTS`` up to ``CHUNK_GROWTH`` times that, at most 1/``CHUNK_FRACTION`` of the
    tensor: big activations get bigger chunks (fewer Python-level iterations, ~25% faster on
    2M-element conv activations) while the scratch stays a small fraction of the activation.
    """
    return max(SCRATCH_ELEMENTS, min(CHUNK_GROWTH * SCRATCH_ELEMENTS, numel // CHUNK_FRACTION))


CHUNK_GROWTH = 4
CHUNK_FRACTION = 16


def _chunks(x: Tensor, dims: tuple[int, ...] | None = None) -> tuple[Tensor, ...] | None:
    """x split along dim 0 into pieces of at most ``chunk_elements`` (one piece if small).

    None when x cannot be swept that way: not contiguous, dim 0 is the neuron dim (``dims`` given
    without 0), or a single row is larger than the scratch buffer.
    """
    n = x.numel()
    if n <= SCRATCH_ELEMENTS:
        return (x,)
    if x.dim() == 0 or not x.is_contiguous() or (dims is not None and 0 not in dims):
        return None
    rows = x.shape[0]
    per_row = n // rows if rows else n
    step = chunk_elements(n) // per_row if per_row else rows
    if step < 1:
        return None
    return torch.split(x, step)


@dataclass(slots=True)
class ForwardSweep:
    """Per-call forward reductions (see ``forward_sweep``)."""

    sum_abs: Tensor | None
    high: Tensor | None
    low: Tensor | None
    finite: list[Tensor]
    entries: int
    nonfinite: list[Tensor]


def forward_sweep(
    *,
    magnitude: Tensor,
    nonnegative: bool,
    extremes: Tensor | None,
    want_high: bool,
    counted: tuple[Tensor, ...],
    dims: tuple[int, ...],
    dtype: torch.dtype,
    reductions_cover: bool = False,
) -> ForwardSweep:
    """One sweep over a site call's forward tensors (all of the same shape).

    * ``magnitude``: Σ|magnitude| per neuron in ``dtype`` (Σmagnitude when ``nonnegative``);
    * ``extremes``: per-neuron min (and max if ``want_high``) of this tensor, in its dtype;
    * ``counted``: tensors whose non-finite entries are counted, as ``entries − Σ finite``
      (``finite``: float scalars, exact) or, past the exact float range, as int64 counts
      (``nonfinite``).
    * ``reductions_cover``: the caller guarantees that ``counted`` is ``(extremes,)`` and that
      the min with the max (or, without ``want_high``, with Σ|magnitude|: ReLU, where +Inf in z
      is +Inf in a) see every non-finite entry of it; on a ``host_check`` device the counting
      pass is then skipped unless they are not finite (``reductions_show_finite``).
    """
    if not dims:  # a 0-dim call: nothing to reduce
        return _forward_scalar(magnitude, nonnegative, extremes, want_high, counted, dtype)
    if reductions_cover and extremes is not None and host_check(extremes):
        return _forward_checked(magnitude, nonnegative, extremes, want_high, dims, dtype)
    n = magnitude.numel()
    if n <= SCRATCH_ELEMENTS:  # the common small case: straight-line, temporaries in scratch
        scratch = _scratch(magnitude.shape, magnitude.dtype) if magnitude.is_cpu else None
        if nonnegative:
            total = magnitude.sum(dims, dtype=dtype)
        elif scratch is not None:
            total = torch.abs(magnitude, out=scratch).sum(dims, dtype=dtype)
        else:
            total = magnitude.abs().sum(dims, dtype=dtype)
        low = high = None
        if extremes is not None:
            low = torch.amin(extremes, dims)
            if want_high:
                high = torch.amax(extremes, dims)
        finite = []
        for t in counted:
            out = scratch if scratch is not None and t.dtype == scratch.dtype else None
            finite.append(_finite_in(t, out))
        return ForwardSweep(total, high, low, finite, n * len(counted), [])
    return _forward_large(magnitude, nonnegative, extremes, want_high, counted, dims, dtype)


def derivative_extremes(
    derivative: Callable[[Tensor | None, Tensor], Tensor],
    z: Tensor | None,
    a: Tensor,
    dims: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """(max, min) over ``dims`` of |σ'| per neuron, σ' = ``derivative(z, a)`` elementwise.

    Large tensors are evaluated in slices along dim 0 (a position dim) of at most
    ``DERIVATIVE_CHUNK`` elements, so σ's temporaries stay small whatever the activation size:
    extra peak memory O(chunk), not O(activation), on every device.
    """
    x = z if z is not None else a
    n = x.numel()
    if not dims or n <= DERIVATIVE_CHUNK or 0 not in dims:
        full = derivative(z, a).abs()
        return (torch.amax(full, dims), torch.amin(full, dims)) if dims else (full, full)
    rows = x.shape[0]
    step = max(1, DERIVATIVE_CHUNK // max(1, n // rows))
    highs: list[Tensor] = []
    lows: list[Tensor] = []
    for start in range(0, rows, step):
        zc = z[start : start + step] if z is not None else None
        d = derivative(zc, a[start : start + step]).abs()
        highs.append(torch.amax(d, dims))
        lows.append(torch.amin(d, dims))
    if len(highs) == 1:
        return highs[0], lows[0]
    return torch.stack(highs).amax(0), torch.stack(lows).amin(0)


def _forward_checked(
    magnitude: Tensor,
    nonnegative: bool,
    extremes: Tensor,
    want_high: bool,
    dims: tuple[int, ...],
    dtype: torch.dtype,
) -> ForwardSweep:
    """``forward_sweep`` without a counting pass: the reductions prove ``extremes`` finite."""
    sweep = forward_sweep(
        magnitude=magnitude,
        nonnegative=nonnegative,
        extremes=extremes,
        want_high=want_high,
        counted=(),
        dims=dims,
        dtype=dtype,
    )
    assert sweep.low is not None and sweep.sum_abs is not None
    other = sweep.high if sweep.high is not None else sweep.sum_abs
    if not reductions_show_finite(sweep.low, other):
        sweep.nonfinite.append(count_nonfinite(extremes))
    return sweep


def _forward_large(
    magnitude: Tensor,
    nonnegative: bool,
    extremes: Tensor | None,
    want_high: bool,
    counted: tuple[Tensor, ...],
    dims: tuple[int, ...],
    dtype: torch.dtype,
) -> ForwardSweep:
    tensors = [t for t in (magnitude, extremes, *counted) if t is not None]
    chunked: list[tuple[Tensor, ...]] | None = None
    if magnitude.is_cpu:
        seen: dict[int, tuple[Tensor, ...] | None] = {}  # in place: one tensor, split once
        split = [
            seen[id(t)] if id(t) in seen else seen.setdefault(id(t), _chunks(t, dims))
            for t in tensors
        ]
        if all(s is not None for s in split):
            chunked = [s for s in split if s is not None]
    sweep = ForwardSweep(None, None, None, [], 0, [])
    exact = [float_count_is_exact(t.numel(), t.dtype) for t in counted]
    for t, ok in zip(counted, exact, strict=True):
        if ok:
            sweep.entries += t.numel()
        else:
            sweep.nonfinite.append(count_nonfinite(t))
    if chunked is None:  # whole tensors, temporaries allocated
        m = magnitude if nonnegative else magnitude.abs()
        sweep.sum_abs = m.sum(dims, dtype=dtype)
        if extremes is not None:
            sweep.low = torch.amin(extremes, dims)
            if want_high:
                sweep.high = torch.amax(extremes, dims)
        sweep.finite = [_finite_in(t, None) for t, ok in zip(counted, exact, strict=True) if ok]
        return sweep
    pieces = iter(chunked)
    mag_chunks = next(pieces)
    ext_chunks = next(pieces) if extremes is not None else ()
    count_chunks = [next(pieces) for _ in counted]
    sums: list[Tensor] = []
    lows: list[Tensor] = []
    highs: list[Tensor] = []
    finite: list[list[Tensor]] = [[] for _ in counted]
    for i, m in enumerate(mag_chunks):
        # the reductions over chunk i run back to back, so it is read from memory once
        if ext_chunks:
            e = ext_chunks[i]
            lows.append(torch.amin(e, dims))
            if want_high:
                highs.append(torch.amax(e, dims))
        if not nonnegative:
            m = torch.abs(m, out=_scratch(m.shape, m.dtype))
        sums.append(m.sum(dims, dtype=dtype))
        for j, chunks in enumerate(count_chunks):
            if exact[j]:
                c = chunks[i]
                finite[j].append(_finite_in(c, _scratch(c.shape, c.dtype)))
    sweep.sum_abs = sums[0] if len(sums) == 1 else torch.stack(sums).sum(0)
    if lows:
        sweep.low = lows[0] if len(lows) == 1 else torch.stack(lows).amin(0)
    if highs:
        sweep.high = highs[0] if len(highs) == 1 else torch.stack(highs).amax(0)
    for parts in finite:
        if parts:
            sweep.finite.append(parts[0] if len(parts) == 1 else torch.stack(parts).sum())
    return sweep


def _forward_scalar(
    magnitude: Tensor,
    nonnegative: bool,
    extremes: Tensor | None,
    want_high: bool,
    counted: tuple[Tensor, ...],
    dtype: torch.dtype,
) -> ForwardSweep:
    sweep = ForwardSweep(None, None, None, [], 0, [])
    m = magnitude if nonnegative else magnitude.abs()
    sweep.sum_abs = m.to(dtype, copy=True)
    if extremes is not None:
        sweep.low = extremes
        sweep.high = extremes if want_high else None
    for t in counted:
        sweep.entries += t.numel()
        sweep.finite.append(_finite_in(t, None))
    return sweep


def _sum_abs(x: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Σ|x| over ``dims`` (CPU: |x| in the scratch, chunk by chunk when x is large)."""
    if not dims:
        return x.abs().to(dtype)
    if not x.is_cpu:
        return x.abs().sum(dims, dtype=dtype)
    if x.numel() <= SCRATCH_ELEMENTS:
        return torch.abs(x, out=_scratch(x.shape, x.dtype)).sum(dims, dtype=dtype)
    chunks = _chunks(x, dims)
    if chunks is None:
        return x.abs().sum(dims, dtype=dtype)
    sums = [torch.abs(c, out=_scratch(c.shape, c.dtype)).sum(dims, dtype=dtype) for c in chunks]
    return sums[0] if len(sums) == 1 else torch.stack(sums).sum(0)


def grad_sweep(
    grad: Tensor, dims: tuple[int, ...], dtype: torch.dtype
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Σ|grad| per neuron (``dtype``) and the non-finite entries of grad.

    Returns (sum_abs, finite, nonfinite): ``finite`` is the float count of finite entries when
    exact (then nonfinite is None), else ``nonfinite`` is the int64 count of NaN/±Inf. On a
    ``host_check`` device Σ|grad| is checked instead of counting: both are None when it is finite
    (no NaN/±Inf), else ``nonfinite`` is the exact count.
    """
    if host_check(grad):
        total = _sum_abs(grad, dims, dtype)
        if reductions_show_finite(total):
            return total, None, None
        return total, None, count_nonfinite(grad)
    n = grad.numel()
    if n <= SCRATCH_ELEMENTS and dims:  # the common small case: straight-line
        g = torch.abs(grad, out=_scratch(grad.shape, grad.dtype)) if grad.is_cpu else grad.abs()
        return g.sum(dims, dtype=dtype), _finite_in(g, g), None
    exact = float_count_is_exact(n, grad.dtype)
    chunks = _chunks(grad, dims) if grad.is_cpu else None
    if chunks is None:
        g = grad.abs()
        total = g.sum(dims, dtype=dtype) if dims else g.to(dtype, copy=True)
        if exact:
            return total, _finite_in(g, g), None
        return total, None, count_nonfinite(g)
    sums: list[Tensor] = []
    finite: list[Tensor] = []
    for c in chunks:
        g = torch.abs(c, out=_scratch(c.shape, c.dtype))
        sums.append(g.sum(dims, dtype=dtype) if dims else g.to(dtype, copy=True))
        if exact:
            finite.append(_finite_in(g, g))
    total = sums[0] if len(sums) == 1 else torch.stack(sums).sum(0)
    if not exact:
        return total, None, count_nonfinite(grad)
    return total, finite[0] if len(finite) == 1 else torch.stack(finite).sum(), None
