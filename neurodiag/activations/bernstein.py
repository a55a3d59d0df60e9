"""Monotone Bernstein-polynomial activation with a provable lower bound on its slope.

σ(x; l, u, c) = Σ_{k=0..n} c_k · C(n,k) (x−l)^k (u−x)^{n−k} / (u−l)^n on [l, u] (Deep Bernstein
Networks, arXiv 2602.04264; DeepBern-Nets, AAAI 2024). Because the coefficients are
re-parameterised so that c_{k+1} − c_k ≥ δ, the derivative
σ'(x) = n/(u−l) · Σ_k (c_{k+1} − c_k) · b_{n−1,k}(x) is a convex combination of increments and
can never fall below δ̄ = n·δ/(u−l): a neuron using it cannot die.

Evaluation never builds the (n+1)-element basis per input element: it runs a division-free
recurrence in t = (x−l)/(u−l), s = 1−t whose terms are all products of non-negative factors
(a power-basis Horner scheme would be cheaper but ill-conditioned), so the computed slope keeps
the ≥ δ̄ guarantee up to rounding. The linear extensions outside [l, u] never form ∞ − ∞ or a
difference of two large terms: σ(±∞) = ±∞ with σ'(±∞) the boundary slope, and far outside
[l, u] σ keeps full relative precision. The backward pass recomputes everything from x; only x,
the coefficients and their (2n+2, F) table are saved. Eagerly, large inputs are processed in
cache-sized chunks with reused buffers: O(n) ops per chunk, about 100 ops per forward+backward.
Measured on one CPU thread (degree 9, per-neuron coefficients), forward+backward costs ~4.5–5.5×
GELU for a (64, 128, 32, 32) input and ~10–13× for a (256, 100) one, where per-op overhead
dominates. Under ``torch.compile`` (opt-in: ``module.compile()`` or compiling the model) the same
recurrences run unchunked and Inductor fuses them into a few loops: ~1.4–1.6× and ~3.3× GELU.
"""

from __future__ import annotations

import functools
import math
import operator
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["Bernstein"]

# Extra slack above δ that init_from gives every increment, so θ = softplus⁻¹(increment − δ)
# is finite; relative to δ, so it never visibly changes the fitted shape.
_INIT_MARGIN = 1e-3
# Points of the least-squares grid used by init_from.
_INIT_GRID = 2001
# Elements per thread in one chunk of the eager kernels (measured best on CPU: 64K-128K).
_CHUNK_PER_THREAD = 1 << 16
# init_critical: σ'(0) = Φ(b) = 1/sqrt(2).
_HALF_SQRT2 = 1.0 / math.sqrt(2.0)
_CRITICAL_SHIFT = statistics.NormalDist().inv_cdf(_HALF_SQRT2)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are evaluated in float32 (the recurrences lose too much in bf16)."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.float32


def _features(x: Tensor, feature_dim: int) -> int:
    """Size of the feature dim of x (dim 0 of a 1-D input), or −1 if feature_dim is invalid."""
    if x.ndim <= 1:
        return x.shape[0] if x.ndim == 1 else 1
    return x.shape[feature_dim] if -x.ndim <= feature_dim < x.ndim else -1


def _layout(x: Tensor, feature_dim: int) -> tuple[int, int, int]:
    """(A, F, B) such that x viewed as (A, F, B) has its feature dim in the middle.

    Shared coefficients broadcast against any F, so for them the layout only decides chunking.
    """
    if x.ndim == 0:
        return 1, 1, 1
    fd = 0 if x.ndim == 1 else feature_dim
    if not -x.ndim <= fd < x.ndim:
        return x.shape[0], 1, math.prod(x.shape[1:])
    fd %= x.ndim
    return math.prod(x.shape[:fd]), x.shape[fd], math.prod(x.shape[fd + 1 :])


def _as3d(x: Tensor, shape: tuple[int, int, int]) -> Tensor:
    try:
        return x.view(shape)
    except RuntimeError:  # strides that cannot be merged: pay for one copy
        return x.reshape(shape)


def _new_output(x: Tensor, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """An uninitialised tensor like x (same strides when possible) and its (A, F, B) view."""
    out = torch.empty_like(x)
    try:
        return out, out.view(shape)
    except RuntimeError:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        return out, out.view(shape)


class _Scratch:
    """One allocation of `count` chunk-sized buffers, re-viewed per chunk shape.

    Re-using buffers with out=/in-place ops avoids an allocation (often an mmap and page
    faults) per elementwise op.
    """

    def __init__(self, count: int, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        self.base = torch.empty(count, numel, dtype=dtype, device=device)
        self.cache: dict[tuple[int, ...], tuple[Tensor, ...]] = {}

    def get(self, shape: torch.Size) -> tuple[Tensor, ...]:
        key = tuple(shape)
        views = self.cache.get(key)
        if views is None:
            base = self.base
            m = math.prod(key)
            views = (base if m == base.shape[1] else base[:, :m]).view(len(base), *key).unbind(0)
            self.cache[key] = views
        return views


@functools.lru_cache(maxsize=64)
def _cpu_scalar(value: float, dtype: torch.dtype) -> Tensor:
    """A cached 0-d CPU tensor: broadcasts against tensors on any device without a transfer.

    In the compute dtype, so that no op has to cast it (a per-op copy, costly on small inputs).
    """
    return torch.tensor(value, dtype=dtype)


def _plan_table(
    c0: Tensor, incs: Tensor, binoms: Tensor, lower: float, upper: float, dtype: torch.dtype
) -> Tensor:
    """The per-feature coefficients of :class:`_Plan` as one contiguous (2n+2, F) tensor.

    Built once per forward and handed to backward: a dozen small ops, about 5% of a
    forward+backward step on a (256, 100) input when it was built twice.
    """
    n = incs.shape[1]
    h = upper - lower
    incs = incs.to(dtype)
    cols = torch.cat(
        [
            torch.cumsum(incs, dim=1),  # c_k − c_0, k = 1..n
            incs * (n / h),
            c0.to(dtype).unsqueeze(1),
            incs[:, -1:] * n,  # dσ/dt above u; below l it is w_1 = n·(c_1 − c_0), see _value
        ],
        dim=1,
    )
    cols[:, : 2 * n].mul_(binoms.to(dtype))
    return cols.t().contiguous()


class _Plan:
    """Per-call scalars and tiny per-feature tensors, shaped (F, 1) to broadcast on (a, F, b)."""

    def __init__(
        self, table: Tensor, binoms: Tensor, lower: float, upper: float, dtype: torch.dtype
    ) -> None:
        n = (table.shape[0] - 2) // 2
        self.n = n
        self.dtype = dtype
        self.lower = lower
        self.inv_h = 1.0 / (upper - lower)
        self.binoms = binoms.to(dtype)  # C(n,k) for k = 1..n, then C(n−1,k) for k = 0..n−1
        # Rows of the (2n+2, F) table from _plan_table.
        rows = table.unsqueeze(-1).unbind(0)
        # Coefficients are used relative to c_0 (added once at the end), which keeps precision
        # when |c_0| is large compared with the increments: w_k = C(n,k)·(c_k − c_0), k = 1..n.
        self.w = rows[:n]
        # σ'(x) = Σ_k wd_k·t^k·s^(n−1−k) with wd_k = n/(u−l)·C(n−1,k)·(c_{k+1} − c_k) ≥ 0.
        self.wd = rows[n : 2 * n]
        self.c0, self.slope_hi = rows[2 * n :]


# ---------------------------------------------------------------------------------------------
# Functional kernels: one pass over the whole tensor, allocation per op. Used when chunking is
# off, in particular under torch.compile, where Inductor fuses each of them into one loop.
# ---------------------------------------------------------------------------------------------


def _coords(plan: _Plan, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The unclamped q = (x−l)/(u−l), t = clamp(q, 0, 1) and s = 1 − t."""
    q = (x.to(plan.dtype) - plan.lower) * plan.inv_h
    t = q.clamp(0.0, 1.0)
    return q, t, 1.0 - t


def _value(plan: _Plan, x: Tensor) -> Tensor:
    """σ(x); A_k = A_{k−1}·s + w_k·t^k sums Σ_k w_k t^k s^(n−k) with no division and no
    cancellation between basis terms, unlike a power-basis Horner scheme.

    With the overshoot e = q − t, the extension is max(e, 0)·slope_hi + min(e, 0)·slope_lo (in
    t units). The lower piece needs no op of its own: slope_lo = n·(c_1 − c_0) = w_1, and
    where e < 0, t = 0 and s = 1 exactly, so using min(q, 1) = t + min(e, 0) instead of t in the
    first term w_1·t·s^(n−1) adds exactly min(e, 0)·w_1. Neither piece is ever ∞ − ∞ (σ(−∞) was
    NaN when the extension was e·slope_hi + min(e, 0)·(slope_lo − slope_hi)) or a difference of
    two large terms.
    """
    q, t, s = _coords(plan, x)
    acc = q.clamp(max=1.0) * plan.w[0]
    pw = t
    for k in range(2, plan.n + 1):
        pw = pw * t
        acc = acc * s + pw * plan.w[k - 1]
    return acc + plan.c0 + (q - t).clamp(min=0.0) * plan.slope_hi


def _slope(plan: _Plan, t: Tensor, s: Tensor) -> Tensor:
    """σ'(x); t is clamped, so outside [l, u] this is the boundary slope. Every term is ≥ 0."""
    wd = plan.wd
    if plan.n == 1:
        return torch.zeros_like(t) + wd[0]
    acc = s * wd[0] + t * wd[1]
    pw = t
    for k in range(2, plan.n):
        pw = pw * t
        acc = acc * s + pw * wd[k]
    return acc


def _moments(plan: _Plan, g: Tensor, q: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """The n+2 rows Σg, Σg·min(q, 1)·s^(n−1), Σg·t^k·s^(n−k) (k = 2..n), Σg·max(e, 0), each
    reduced to (F,): ∂σ/∂c_0 and ∂σ/∂w_k, k = 1..n, with the lower extension folded into w_1's
    row as in :func:`_value` (it is Σg·t·s^(n−1) + Σg·min(e, 0)), then ∂σ/∂slope_hi."""
    n = plan.n
    spow = [s]
    for _ in range(n - 2):
        spow.append(spow[-1] * s)
    first = g * q.clamp(max=1.0)
    rows = [g, first * spow[-1] if n > 1 else first]
    gt = g * t if n > 1 else g
    for k in range(2, n + 1):
        gt = gt * t
        rows.append(gt if k == n else gt * spow[n - k - 1])
    rows.append(g * (q - t).clamp(min=0.0))
    return torch.stack([r.sum(dim=(0, 2)) for r in rows])


# ---------------------------------------------------------------------------------------------
# Chunked kernels: the same recurrences on cache-sized blocks with pre-allocated buffers.
# ---------------------------------------------------------------------------------------------


def _coords_into(plan: _Plan, x: Tensor, q: Tensor, t: Tensor, s: Tensor) -> None:
    """:func:`_coords` into buffers: q (unclamped), t, s."""
    shift = _cpu_scalar(-plan.lower * plan.inv_h, plan.dtype)
    if x.dtype == plan.dtype:
        torch.add(shift, x, alpha=plan.inv_h, out=q)
    else:  # compute (x−l)/h in the compute dtype, not in bf16
        q.copy_(x)
        torch.add(shift, q, alpha=plan.inv_h, out=q)
    torch.clamp(q, 0.0, 1.0, out=t)
    torch.sub(_cpu_scalar(1.0, plan.dtype), t, out=s)


def _value_into(plan: _Plan, x: Tensor, out: Tensor, bufs: Sequence[Tensor]) -> None:
    """Chunked :func:`_value`; overwrites all five buffers (q, t, s, pw, acc)."""
    q, t, s, pw, acc = bufs[:5]
    _coords_into(plan, x, q, t, s)
    w = plan.w
    # min(q, 1) = t + min(e, 0): the first term also carries the lower extension.
    torch.clamp(q, max=1.0, out=acc).mul_(w[0])
    for k in range(2, plan.n + 1):
        if k == 2:
            torch.mul(t, t, out=pw)
        else:
            pw.mul_(t)
        acc.mul_(s).addcmul_(pw, w[k - 1])
    acc.add_(plan.c0)
    torch.addcmul(acc, q.sub_(t).clamp_(min=0.0), plan.slope_hi, out=out)  # max(e, 0)·slope_hi


def _slope_into(plan: _Plan, t: Tensor, s: Tensor, pw: Tensor, acc: Tensor) -> None:
    wd = plan.wd
    if plan.n == 1:
        acc.zero_().add_(wd[0])
        return
    torch.mul(s, wd[0], out=acc).addcmul_(t, wd[1])
    for k in range(2, plan.n):
        if k == 2:
            torch.mul(t, t, out=pw)
        else:
            pw.mul_(t)
        acc.mul_(s).addcmul_(pw, wd[k])


def _moments_into(
    plan: _Plan,
    g: Tensor,
    q: Tensor,
    t: Tensor,
    s: Tensor,
    bufs: Sequence[Tensor],
    out: Tensor,
) -> None:
    """Chunked :func:`_moments` written into `out` (n+2, F); bufs: gt, tmp, s², …, s^(n−1).

    Overwrites q (with max(e, 0)).
    """
    n = plan.n
    gt, tmp, *spow = bufs
    dims = (0, 2)
    torch.sum(g, dim=dims, out=out[0])
    for j in range(n - 2):  # spow[j] = s^(j+2)
        torch.mul(spow[j - 1] if j else s, s, out=spow[j])
    # Row 1: Σg·min(q, 1)·s^(n−1) = Σg·t·s^(n−1) + Σg·min(e, 0) (s = 1 where e < 0).
    torch.clamp(q, max=1.0, out=tmp).mul_(g)
    if n > 1:
        tmp.mul_(s if n == 2 else spow[n - 3])
    torch.sum(tmp, dim=dims, out=out[1])
    for k in range(2, n + 1):
        if k == 2:
            torch.mul(g, t, out=gt).mul_(t)
        else:
            gt.mul_(t)
        if k == n:
            torch.sum(gt, dim=dims, out=out[k])
        else:
            p = n - k  # power of s
            torch.mul(gt, s if p == 1 else spow[p - 2], out=tmp)
            torch.sum(tmp, dim=dims, out=out[k])
    torch.mul(g, q.sub_(t).clamp_(min=0.0), out=tmp)  # g·max(e, 0)
    torch.sum(tmp, dim=dims, out=out[n + 1])


def _grads_from_moments(mom: Tensor, binoms: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(∂L/∂c0, ∂L/∂increments) from the moment rows of :func:`_moments`."""
    # (n, F): ∂/∂(c_k − c_0); for k = 1 this includes the lower extension, whose slope
    # n·(c_1 − c_0) = n·inc_0 is linear in c_1 − c_0 alone.
    gc = mom[1 : n + 1] * binoms[:n].unsqueeze(1)
    # c_k − c_0 = Σ_{j<k} inc_j, so ∂/∂inc_j = Σ_{k>j} ∂/∂(c_k − c_0).
    gi = gc.flip(0).cumsum(0).flip(0)
    gi[-1] += n * mom[n + 1]  # Σ g·max(e, 0): the upper linear piece has slope n·inc_{n−1}
    return mom[0], gi.t()


def _split(t3: Tensor, chunk: int) -> list[Tensor]:
    """Views of an (A, F, B) tensor covering about `chunk` elements each (whole F always).

    Chunking keeps the O(n) temporaries of the recurrences in cache instead of streaming each
    of them through main memory; equal shapes split identically.
    """
    a, f, b = t3.shape
    if a * f * b <= chunk:
        return [t3]
    if f * b <= chunk:
        return list(torch.split(t3, chunk // (f * b), dim=0))
    cols = max(1, chunk // f)
    return [p for row in torch.split(t3, 1, dim=0) for p in torch.split(row, cols, dim=2)]


class _BernsteinFunction(torch.autograd.Function):
    """σ(x) with a hand-written backward that saves only x, c0, the increments and the (2n+2, F)
    coefficient table (a second, non-differentiable output, so backward need not rebuild it)."""

    @staticmethod
    def forward(
        x: Tensor,
        c0: Tensor,
        incs: Tensor,
        binoms: Tensor,
        lower: float,
        upper: float,
        feature_dim: int,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        dtype = _compute_dtype(x.dtype)
        table = _plan_table(c0, incs, binoms, lower, upper, dtype)
        plan = _Plan(table, binoms, lower, upper, dtype)
        shape = _layout(x, feature_dim)
        x3 = _as3d(x, shape)
        if chunk <= 0:
            return _value(plan, x3).to(x.dtype).view(x.shape), table
        out, out3 = _new_output(x, shape)
        xs = _split(x3, chunk)
        scratch = _Scratch(5, xs[0].numel(), plan.dtype, x.device)
        for xc, oc in zip(xs, _split(out3, chunk)):
            _value_into(plan, xc, oc, scratch.get(xc.shape))
        return out, table

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        x, c0, incs, binoms, lower, upper, feature_dim, chunk = inputs
        table = output[1]
        ctx.mark_non_differentiable(table)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, c0, incs, binoms, table)
        ctx.lower = lower
        ctx.upper = upper
        ctx.feature_dim = feature_dim
        ctx.chunk = chunk

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor | None, _: Tensor | None) -> tuple[Tensor | None, ...]:
        if g is None:  # only the table was used downstream: it has no gradient
            return None, None, None, None, None, None, None, None
        x, c0, incs, binoms, table = ctx.saved_tensors
        need_x, need_c0, need_incs = ctx.needs_input_grad[:3]
        need_c = need_c0 or need_incs
        plan = _Plan(table, binoms, ctx.lower, ctx.upper, _compute_dtype(x.dtype))
        n = plan.n
        shape = _layout(x, ctx.feature_dim)
        x3 = _as3d(x, shape)
        g3 = _as3d(g, shape)
        grad_x: Tensor | None = None
        mom: Tensor | None = None
        if ctx.chunk <= 0:
            q, t, s = _coords(plan, x3)
            gc = g3.to(plan.dtype)
            if need_x:
                grad_x = (gc * _slope(plan, t, s)).to(x.dtype).view(x.shape)
            if need_c:
                mom = _moments(plan, gc, q, t, s)
        else:
            xs = _split(x3, ctx.chunk)
            gs = _split(g3, ctx.chunk)
            gxs: list[Tensor | None] = [None] * len(xs)
            if need_x:
                grad_x, gx3 = _new_output(x, shape)
                gxs = list(_split(gx3, ctx.chunk))
            if need_c:
                mom = torch.zeros(n + 2, shape[1], dtype=plan.dtype, device=x.device)
                mom_chunk = mom if len(xs) == 1 else torch.empty_like(mom)
            cast_g = g.dtype != plan.dtype
            count = 5 + int(cast_g) + (max(n - 2, 0) + 2 if need_c else 0)
            scratch = _Scratch(count, xs[0].numel(), plan.dtype, x.device)
            for xc, gc, gxc in zip(xs, gs, gxs):
                bufs = scratch.get(xc.shape)
                q, t, s, pw, acc = bufs[:5]
                _coords_into(plan, xc, q, t, s)
                if cast_g:
                    gc = bufs[5].copy_(gc)
                if gxc is not None:
                    _slope_into(plan, t, s, pw, acc)
                    torch.mul(gc, acc, out=gxc)
                if mom is not None:
                    _moments_into(plan, gc, q, t, s, bufs[5 + int(cast_g) :], mom_chunk)
                    if mom_chunk is not mom:
                        mom.add_(mom_chunk)
        grad_c0: Tensor | None = None
        grad_incs: Tensor | None = None
        if mom is not None:
            if c0.shape[0] == 1 and mom.shape[1] != 1:  # shared coefficients
                mom = mom.sum(dim=1, keepdim=True)
            gc0, gi = _grads_from_moments(mom, plan.binoms, n)
            grad_c0 = gc0.to(c0.dtype) if need_c0 else None
            grad_incs = gi.to(incs.dtype) if need_incs else None
        return grad_x, grad_c0, grad_incs, None, None, None, None, None


def _finite(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _ramp(v: Tensor) -> Tensor:
    """E[max(v + N, 0)] for N ~ N(0, 1), i.e. v·Φ(v) + φ(v): a ReLU smoothed by a Gaussian."""
    cdf: Tensor = torch.special.ndtr(v)
    return v * cdf + torch.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def _nnls(a: Tensor, b: Tensor) -> Tensor:
    """min ||a v − b|| subject to v ≥ 0: Lawson–Hanson active set on the normal equations.

    The problems here have at most a few dozen columns, so k×k solves keep init_from cheap.
    """
    gram = a.t() @ a
    rhs = a.t() @ b
    k = gram.shape[0]
    v = torch.zeros(k, dtype=a.dtype)
    passive = torch.zeros(k, dtype=torch.bool)
    tol = 1e-10 * (float(rhs.abs().max()) + float(gram.abs().max()) * float(b.abs().max()))
    for _ in range(3 * k + 10):
        grad = rhs - gram @ v
        free = ~passive
        if not bool(free.any()) or float(grad[free].max()) <= tol:
            break
        passive[int(torch.where(free, grad, -torch.inf).argmax())] = True
        for _ in range(3 * k + 10):
            idx = passive.nonzero().squeeze(1)
            z = torch.zeros_like(v)
            sub = gram[idx][:, idx]
            z[idx] = torch.tensor(_solve(sub.tolist(), rhs[idx].tolist()), dtype=v.dtype)
            if bool((z[idx] > 0).all()):
                v = z
                break
            bad = passive & (z <= 0)
            alpha = float((v[bad] / (v[bad] - z[bad])).min())
            v = v + alpha * (z - v)
            passive &= v > 0
            v[~passive] = 0.0
    return v


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve the small system ``a x = b`` in Python floats: the same bits in every process.

    ``torch.linalg.lstsq`` (LAPACK) gave different last bits for the same ill-conditioned
    degree-15 system in different processes (its BLAS kernels depend on memory alignment), and
    training amplified that into different results of ``compare`` on a rerun. The systems here
    have at most a few dozen unknowns. Gaussian elimination with partial pivoting; a pivot below
    1e-13 of the largest one is a dependent column, whose unknown is set to 0 (the basic
    solution a rank-revealing least-squares driver would also pick).
    """
    k = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    scale = max((abs(m[i][i]) for i in range(k)), default=0.0) or 1.0
    pivots: list[int | None] = []
    row = 0
    for col in range(k):
        best = max(range(row, k), key=lambda r: abs(m[r][col]), default=None)
        if best is None or abs(m[best][col]) <= 1e-13 * scale:
            pivots.append(None)
            continue
        m[row], m[best] = m[best], m[row]
        pivot = m[row][col]
        for r in range(row + 1, k):
            factor = m[r][col] / pivot
            if factor:
                for c in range(col, k + 1):
                    m[r][c] -= factor * m[row][c]
        pivots.append(row)
        row += 1
    x = [0.0] * k
    for col in range(k - 1, -1, -1):
        pivot_row = pivots[col]
        if pivot_row is None:
            continue
        total = m[pivot_row][k] - sum(m[pivot_row][c] * x[c] for c in range(col + 1, k))
        x[col] = total / m[pivot_row][col]
    return x


class Bernstein(nn.Module):
    """Learnable monotone Bernstein activation whose slope is ≥ δ̄ = n·δ/(u−l) everywhere.

    Defaults follow Deep Bernstein Networks (arXiv 2602.04264): degree n = 9, δ = 0.01, range
    [l, u] = [−5, 5], giving δ̄ = 0.009. Coefficients are c_0 = ``c0`` and
    c_{k+1} = c_k + δ + softplus(θ_k), so monotonicity with margin δ holds for *any* parameter
    values and survives every optimiser step.

    Outside [l, u] the polynomial is continued linearly with its boundary slope
    (σ(x) = σ(l) + σ'(l)(x−l) below l, likewise above u): σ is C¹ at l and u, grows only
    linearly, and σ' ≥ δ̄ on the whole real line, so out-of-range inputs cannot kill a neuron
    either.

    ``num_features=None`` shares one coefficient set across all neurons; otherwise each of the
    ``num_features`` entries along ``feature_dim`` gets its own (dim 1 for (N, F) and
    channel-first (N, C, ...) inputs, ``feature_dim=-1`` for (N, T, F); a 1-D input is one
    sample of features). New modules start as the monotone least-squares fit to ReLU, see
    :meth:`init_from`. ``chunk_elements`` (attribute; None = 64K per intra-op thread, 0 = one
    unchunked pass) sets how many elements the eager path processes per cache-sized block;
    under torch.compile everything is one pass.
    """

    chunk_elements: int | None
    _binoms: Tensor

    def __init__(
        self,
        degree: int = 9,
        delta: float = 0.01,
        lower: float = -5.0,
        upper: float = 5.0,
        num_features: int | None = None,
        feature_dim: int = 1,
    ) -> None:
        super().__init__()
        try:
            degree = operator.index(degree)
        except TypeError:
            raise ValueError(f"degree must be an integer ≥ 1, got {degree!r}") from None
        if degree < 1:
            raise ValueError(f"degree must be an integer ≥ 1, got {degree!r}")
        delta, lower, upper = (
            _finite(delta, "delta"),
            _finite(lower, "lower"),
            _finite(upper, "upper"),
        )
        if delta <= 0:
            raise ValueError(
                f"delta must be > 0 (it is the guaranteed slope margin), got {delta!r}"
            )
        if not lower < upper:
            raise ValueError(f"need lower < upper for the range [l, u], got [{lower!r}, {upper!r}]")
        if num_features is not None:
            bad = ValueError(f"num_features must be None or an integer ≥ 1, got {num_features!r}")
            try:
                num_features = operator.index(num_features)
            except TypeError:
                raise bad from None
            if num_features < 1:
                raise bad
        self.degree = degree
        self.delta = delta
        self.lower = lower
        self.upper = upper
        self.num_features = num_features
        self.feature_dim = operator.index(feature_dim)
        self.chunk_elements = None
        rows = 1 if num_features is None else num_features
        self.c0 = nn.Parameter(torch.zeros(rows))
        self.theta = nn.Parameter(torch.zeros(rows, degree))
        # An integer buffer follows .to(device) but is never cast by .to(dtype)/.half().
        binoms = [math.comb(degree, k) for k in range(1, degree + 1)]
        binoms += [math.comb(degree - 1, k) for k in range(degree)]
        self.register_buffer("_binoms", torch.tensor(binoms), persistent=False)
        self.init_from(torch.relu)

    @property
    def increments(self) -> Tensor:
        """c_{k+1} − c_k = δ + softplus(θ_k) ≥ δ, shape (F, n).

        Computed in at least float32: in bf16 the sum could round to just below δ.
        """
        theta = self.theta
        return F.softplus(theta.to(_compute_dtype(theta.dtype))) + self.delta

    @property
    def coefficients(self) -> Tensor:
        """The control coefficients c, shape (F, n+1) (F = 1 when shared)."""
        rest = self.c0.unsqueeze(1) + torch.cumsum(self.increments, dim=1)
        return torch.cat([self.c0.unsqueeze(1), rest], dim=1)

    @property
    def delta_bar(self) -> float:
        """Guaranteed lower bound n·δ/(u−l) on σ' over the whole real line."""
        return self.degree * self.delta / (self.upper - self.lower)

    def _chunk(self) -> int:
        if torch.compiler.is_compiling():
            return 0  # one pass: Inductor fuses it, chunk loops would only be unrolled
        if self.chunk_elements is not None:
            return self.chunk_elements
        # About 64K elements per thread and op keeps each thread's buffers in its L2 cache.
        return _CHUNK_PER_THREAD * torch.get_num_threads()

    def _check(self, x: Tensor) -> None:
        if not x.is_floating_point():
            raise TypeError(f"Bernstein needs a floating-point input, got {x.dtype}")
        if self.num_features is not None:
            found = _features(x, self.feature_dim)
            if found != self.num_features:
                raise ValueError(
                    f"expected {self.num_features} features along dim {self.feature_dim} of an "
                    f"input of shape {tuple(x.shape)}, found {found}"
                )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        out: Tensor
        out, _ = _BernsteinFunction.apply(  # type: ignore[no-untyped-call]
            x,
            self.c0,
            self.increments,
            self._binoms,
            self.lower,
            self.upper,
            self.feature_dim,
            self._chunk(),
        )
        return out

    @torch.no_grad()
    def derivative(self, x: Tensor) -> Tensor:
        """Exact elementwise σ'(x) (the boundary slope outside [l, u]), same shape as x.

        The dtype is x's, except float32 for half-precision x: rounding to bf16 could otherwise
        make σ' look smaller than δ̄.
        """
        self._check(x)
        dtype = _compute_dtype(x.dtype)
        bounds = self.lower, self.upper
        table = _plan_table(self.c0, self.increments, self._binoms, *bounds, dtype)
        plan = _Plan(table, self._binoms, *bounds, dtype)
        shape = _layout(x, self.feature_dim)
        x3 = _as3d(x, shape)
        chunk = self._chunk()
        if chunk <= 0:
            _, t, s = _coords(plan, x3)
            return _slope(plan, t, s).view(x.shape)
        out = torch.empty(x.shape, dtype=plan.dtype, device=x.device)
        out3 = out.view(shape)
        xs = _split(x3, chunk)
        scratch = _Scratch(4, xs[0].numel(), plan.dtype, x.device)
        for xc, oc in zip(xs, _split(out3, chunk)):
            q, t, s, pw = scratch.get(xc.shape)
            _coords_into(plan, xc, q, t, s)
            _slope_into(plan, t, s, pw, oc)
        return out

    @torch.no_grad()
    def init_from(self, fn: Callable[[Tensor], Tensor]) -> Bernstein:
        """Fit σ to ``fn`` on [l, u] under the monotone constraint; every neuron gets the same fit.

        Lets a trained model's ReLU/GELU be swapped for Bernstein without destroying it. Method:
        with increments δ' + v_k (δ' = δ·(1 + 1e-3), v ≥ 0), σ(x) = c_0 + δ'·n·t +
        Σ_k v_k·G_k(t) where G_k = Σ_{j>k} b_{n,j} rises from 0 to 1. Minimising the squared
        error on a uniform grid of 2001 points over [l, u] is a non-negative least-squares
        problem in v (solved exactly, Lawson–Hanson) with c_0 free, so the mean error over the
        grid is zero. This is never worse in least squares than the classic Bernstein operator
        c_k = fn(l + k(u−l)/n), which converges only like O(1/n). The extra δ·1e-3 keeps θ finite.
        Monotone coefficients cannot follow a kink closely: with the defaults the max error is
        0.35 for ReLU and 0.28 for GELU (Bernstein operator: 0.68, 0.58), roughly ∝ u − l,
        so a tighter range or a higher degree fits a trained model more faithfully.
        """
        n = self.degree
        t = torch.linspace(0.0, 1.0, _INIT_GRID, dtype=torch.float64)
        grid = self.lower + (self.upper - self.lower) * t
        try:
            target = fn(grid)
        except (RuntimeError, TypeError):  # e.g. a module with float32 weights
            target = fn(grid.to(self.c0.dtype))
        target = torch.as_tensor(target).to(device="cpu", dtype=torch.float64)
        if target.shape != grid.shape or not bool(torch.isfinite(target).all()):
            raise ValueError(
                "init_from: fn must map a 1-D tensor to finite values of the same shape"
            )
        delta = self.delta * (1.0 + _INIT_MARGIN)
        k = torch.arange(n + 1, dtype=torch.float64)
        binom = torch.tensor([math.comb(n, j) for j in range(n + 1)], dtype=torch.float64)
        basis = binom * t.unsqueeze(1) ** k * (1.0 - t.unsqueeze(1)) ** (n - k)  # (M, n+1)
        cdf = basis.flip(1).cumsum(1).flip(1)[:, 1:]  # G_k = Σ_{j>k} b_j, (M, n)
        y = target - delta * n * t
        cdf_mean = cdf.mean(0)
        v = _nnls(cdf - cdf_mean, y - y.mean())
        c0 = y.mean() - cdf_mean @ v
        theta = _inverse_softplus(v + (delta - self.delta))
        self.c0.copy_(c0.expand_as(self.c0))
        self.theta.copy_(theta.expand_as(self.theta))
        return self

    @torch.no_grad()
    def init_critical(self) -> Bernstein:
        """Start in a shape a deep He-initialised network trains through from scratch.

        Target (fitted by :meth:`init_from`): σ'(x) = Φ((x − m)/w + b), a ReLU step at the
        middle m of [l, u] (0 for the default range; the site's mean for range=auto) smoothed
        by a Gaussian of width w = 0.75·(u−l)/sqrt(n−1) (1.5× the mid-range spread of the
        derivative's Bernstein basis, so degree n can follow it), shifted so that
        σ'(m) = Φ(b) = 1/sqrt(2); σ(m) = 0. Then σ'(m+x)² + σ'(m−x)² ≈ 1 for all x, and a
        Gaussian centred on m only sees that even part: 2·E[σ'(z)²] ≈ 1 for z ~ N(m, s²) at
        every scale s (0.92-1.08 for degrees 2-25, s from 1% to 20× (u−l)/2; 0.99-1.00 for
        degree 9). So each He-initialised layer passes the squared gradient on unchanged, as
        with ReLU, whatever scale training moves the pre-activations to. Shape (defaults):
        slope 1/sqrt(2) at 0, → 1 above u, 0.1 at l, σ(l) ≈ −1.8, like a softened ELU.
        Degree 1: σ(x) = (x − m)/sqrt(2).

        The ReLU fit (the default init) is no such starting point: it cannot follow the kink,
        so its slope is small around 0 (σ'(0) ≈ 0.41; 2·E[σ'(z)²] ≈ 0.57 at s = 1, 0.40 at
        s = 0.5, never above 0.88), every layer shrinks the squared gradient, and once
        training shrinks the pre-activations a 50-layer MLP maps every input to one output.
        """
        n = self.degree
        middle = 0.5 * (self.lower + self.upper)
        if n == 1:
            return self.init_from(lambda x: (x - middle) * _HALF_SQRT2)
        width = 0.75 * (self.upper - self.lower) / math.sqrt(n - 1)

        def smoothed_step_integral(x: Tensor) -> Tensor:
            v = (x - middle) / width + _CRITICAL_SHIFT
            return width * (_ramp(v) - _ramp(torch.full_like(v, _CRITICAL_SHIFT)))

        return self.init_from(smoothed_step_integral)

    def extra_repr(self) -> str:
        return (
            f"degree={self.degree}, delta={self.delta}, range=({self.lower}, {self.upper}), "
            f"num_features={self.num_features}, feature_dim={self.feature_dim}"
        )
