"""Monotone Bernstein-polynomial activation with a provable lower bound on its slope.

σ(x; l, u, c) = Σ_{k=0..n} c_k · C(n,k) (x−l)^k (u−x)^{n−k} / (u−l)^n on [l, u] (Deep Bernstein
Networks, arXiv 2602.04264; DeepBern-Nets, AAAI 2024). Because the coefficients are
re-parameterised so that c_{k+1} − c_k ≥ δ, the derivative
σ'(x) = n/(u−l) · Σ_k (c_{k+1} − c_k) · b_{n−1,k}(x) is a convex combination of increments and
can never fall below δ̄ = n·δ/(u−l): a neuron using it cannot die.

Evaluation never builds the (n+1)-element basis per input element: it runs a division-free
Horner-like recurrence in t = (x−l)/(u−l), s = 1−t whose terms are all products of non-negative
factors, so the computed slope keeps the ≥ δ̄ guarantee up to rounding. Large inputs are processed
in cache-sized chunks, which on CPU is several times faster than full-size elementwise ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def _chunks(shape: tuple[int, int, int], chunk: int) -> list[tuple[slice, slice]]:
    """Index ranges over (A, ·, B) covering about `chunk` elements each.

    Chunking keeps the O(n) temporaries of the recurrences in L2 cache instead of streaming
    each of them through main memory.
    """
    a, f, b = shape
    full = slice(None)
    if a * f * b <= chunk:
        return [(full, full)]
    if f * b <= chunk:
        rows = chunk // (f * b)
        return [(slice(i, i + rows), full) for i in range(0, a, rows)]
    cols = max(1, chunk // f)
    return [(slice(i, i + 1), slice(j, j + cols)) for i in range(a) for j in range(0, b, cols)]


class _Scratch:
    """One allocation of `count` chunk-sized buffers, re-viewed per chunk shape.

    Re-using buffers with out=/in-place ops avoids an allocation (often an mmap and page
    faults) per elementwise op.
    """

    def __init__(self, count: int, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        self.rows = torch.empty(count, numel, dtype=dtype, device=device).unbind(0)
        self.cache: dict[tuple[int, ...], list[Tensor]] = {}

    def get(self, shape: torch.Size) -> list[Tensor]:
        key = tuple(shape)
        views = self.cache.get(key)
        if views is None:
            m = math.prod(key)
            views = [row[:m].view(key) for row in self.rows]
            self.cache[key] = views
        return views


class _Plan:
    """Per-call scalars and tiny per-feature tensors, shaped (F, 1) to broadcast on (a, F, b)."""

    def __init__(
        self,
        c0: Tensor,
        incs: Tensor,
        binom: Tensor,
        binom_d: Tensor,
        lower: float,
        upper: float,
        dtype: torch.dtype,
    ) -> None:
        n = incs.shape[1]
        h = upper - lower
        c0 = c0.to(dtype)
        incs = incs.to(dtype)
        self.n = n
        self.dtype = dtype
        self.lower = lower
        self.inv_h = 1.0 / h
        # Coefficients are used relative to c_0 (added once at the end), which keeps precision
        # when |c_0| is large compared with the increments: w_k = C(n,k)·(c_k − c_0), k = 1..n.
        self.w = (torch.cumsum(incs, dim=1) * binom[1:].to(dtype)).t().contiguous().unsqueeze(-1)
        # σ'(x) = Σ_k wd_k·t^k·s^(n−1−k) with wd_k = n/(u−l)·C(n−1,k)·(c_{k+1} − c_k) ≥ 0.
        self.wd = (incs * (binom_d.to(dtype) * (n / h))).t().contiguous().unsqueeze(-1)
        self.c0 = c0.view(-1, 1)
        self.slope_hi = (incs[:, -1] * n).view(-1, 1)  # dσ/dt above u
        self.slope_diff = ((incs[:, 0] - incs[:, -1]) * n).view(-1, 1)  # lower minus upper
        # CPU 0-d tensors broadcast against tensors on any device without a transfer.
        self.shift = torch.tensor(-lower / h, dtype=torch.float64)
        self.one = torch.ones((), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Functional kernels: one pass over the whole tensor, allocation per op. Used when chunking is
# off, in particular under torch.compile, where Inductor fuses each of them into one loop.
# ---------------------------------------------------------------------------------------------


def _coords(plan: _Plan, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """t = clamp((x−l)/(u−l), 0, 1), s = 1 − t and the overshoot e = (x−l)/(u−l) − t."""
    tt = (x.to(plan.dtype) - plan.lower) * plan.inv_h
    t = tt.clamp(0.0, 1.0)
    return t, 1.0 - t, tt - t


def _value(plan: _Plan, x: Tensor) -> Tensor:
    """σ(x); A_k = A_{k−1}·s + w_k·t^k sums Σ_k w_k t^k s^(n−k) with no division and no
    cancellation between basis terms, unlike a power-basis Horner scheme."""
    t, s, e = _coords(plan, x)
    acc = t * plan.w[0]
    pw = t
    for k in range(2, plan.n + 1):
        pw = pw * t
        acc = acc * s + pw * plan.w[k - 1]
    return acc + plan.c0 + e * plan.slope_hi + e.clamp(max=0.0) * plan.slope_diff


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


def _moments(plan: _Plan, g: Tensor, t: Tensor, s: Tensor, e: Tensor) -> Tensor:
    """Rows Σg, Σg·t^k·s^(n−k) (k = 1..n), Σg·e, Σg·min(e, 0), each reduced to (F,)."""
    n = plan.n
    spow = [s]
    for _ in range(n - 2):
        spow.append(spow[-1] * s)
    rows = [g]
    gt = g
    for k in range(1, n + 1):
        gt = gt * t
        rows.append(gt if k == n else gt * spow[n - k - 1])
    rows += [g * e, g * e.clamp(max=0.0)]
    return torch.stack([r.sum(dim=(0, 2)) for r in rows])


# ---------------------------------------------------------------------------------------------
# Chunked kernels: the same recurrences on cache-sized blocks with pre-allocated buffers.
# ---------------------------------------------------------------------------------------------


def _coords_into(plan: _Plan, x: Tensor, e: Tensor, t: Tensor, s: Tensor) -> None:
    if x.dtype == plan.dtype:
        torch.add(plan.shift, x, alpha=plan.inv_h, out=e)
    else:  # compute (x−l)/h in the compute dtype, not in bf16
        e.copy_(x)
        torch.add(plan.shift, e, alpha=plan.inv_h, out=e)
    torch.clamp(e, 0.0, 1.0, out=t)
    e.sub_(t)
    torch.sub(plan.one, t, out=s)


def _value_into(plan: _Plan, x: Tensor, out: Tensor, bufs: list[Tensor]) -> None:
    e, t, s, pw, acc = bufs[:5]
    _coords_into(plan, x, e, t, s)
    w = plan.w
    torch.mul(t, w[0], out=acc)
    for k in range(2, plan.n + 1):
        if k == 2:
            torch.mul(t, t, out=pw)
        else:
            pw.mul_(t)
        acc.mul_(s).addcmul_(pw, w[k - 1])
    acc.add_(plan.c0).addcmul_(e, plan.slope_hi)
    # min(e, 0)·(slope_lo − slope_hi) turns the upper slope into the lower one below l.
    torch.addcmul(acc, e.clamp_(max=0.0), plan.slope_diff, out=out)


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
    plan: _Plan, g: Tensor, t: Tensor, s: Tensor, e: Tensor, bufs: list[Tensor], out: Tensor
) -> None:
    """Chunked :func:`_moments` written into `out` (n+3, F); bufs: gt, tmp, s², …, s^(n−1)."""
    n = plan.n
    gt, tmp, *spow = bufs
    dims = (0, 2)
    torch.sum(g, dim=dims, out=out[0])
    for j in range(n - 2):  # spow[j] = s^(j+2)
        torch.mul(spow[j - 1] if j else s, s, out=spow[j])
    for k in range(1, n + 1):
        if k == 1:
            torch.mul(g, t, out=gt)
        else:
            gt.mul_(t)
        if k == n:
            torch.sum(gt, dim=dims, out=out[k])
        else:
            p = n - k  # power of s
            torch.mul(gt, s if p == 1 else spow[p - 2], out=tmp)
            torch.sum(tmp, dim=dims, out=out[k])
    torch.mul(g, e, out=tmp)
    torch.sum(tmp, dim=dims, out=out[n + 1])
    torch.mul(g, e.clamp_(max=0.0), out=tmp)
    torch.sum(tmp, dim=dims, out=out[n + 2])


def _grads_from_moments(mom: Tensor, binom: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(∂L/∂c0, ∂L/∂increments) from the moment rows of :func:`_moments`."""
    gc = mom[1 : n + 1] * binom[1:].to(mom.dtype).unsqueeze(1)  # (n, F): ∂/∂(c_k − c_0)
    # c_k − c_0 = Σ_{j<k} inc_j, so ∂/∂inc_j = Σ_{k>j} ∂/∂(c_k − c_0).
    gi = gc.flip(0).cumsum(0).flip(0)
    low = mom[n + 2]  # Σ g·min(e, 0): the lower linear piece has slope n·inc_0 in t units
    high = mom[n + 1] - low
    extra = torch.zeros_like(gi)
    extra[0] += n * low
    extra[-1] += n * high
    return mom[0], (gi + extra).t()


class _BernsteinFunction(torch.autograd.Function):
    """σ(x) with a hand-written backward that saves only x, c0 and the increments."""

    @staticmethod
    def forward(
        x: Tensor,
        c0: Tensor,
        incs: Tensor,
        binom: Tensor,
        binom_d: Tensor,
        lower: float,
        upper: float,
        feature_dim: int,
        chunk: int,
    ) -> Tensor:
        plan = _Plan(c0, incs, binom, binom_d, lower, upper, _compute_dtype(x.dtype))
        shape = _layout(x, feature_dim)
        x3 = _as3d(x, shape)
        if chunk <= 0:
            return _value(plan, x3).to(x.dtype).view(x.shape)
        out, out3 = _new_output(x, shape)
        pieces = _chunks(shape, chunk)
        scratch = _Scratch(5, x3[pieces[0][0], :, pieces[0][1]].numel(), plan.dtype, x.device)
        for ia, ib in pieces:
            xs = x3[ia, :, ib]
            _value_into(plan, xs, out3[ia, :, ib], scratch.get(xs.shape))
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, c0, incs, binom, binom_d, lower, upper, feature_dim, chunk = inputs
        ctx.save_for_backward(x, c0, incs, binom, binom_d)
        ctx.lower = lower
        ctx.upper = upper
        ctx.feature_dim = feature_dim
        ctx.chunk = chunk

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, c0, incs, binom, binom_d = ctx.saved_tensors
        need_x, need_c0, need_incs = ctx.needs_input_grad[:3]
        need_c = need_c0 or need_incs
        plan = _Plan(c0, incs, binom, binom_d, ctx.lower, ctx.upper, _compute_dtype(x.dtype))
        n = plan.n
        shape = _layout(x, ctx.feature_dim)
        x3 = _as3d(x, shape)
        g3 = _as3d(g, shape)
        grad_x: Tensor | None = None
        mom: Tensor | None = None
        if ctx.chunk <= 0:
            t, s, e = _coords(plan, x3)
            gc = g3.to(plan.dtype)
            if need_x:
                grad_x = (gc * _slope(plan, t, s)).to(x.dtype).view(x.shape)
            if need_c:
                mom = _moments(plan, gc, t, s, e)
        else:
            gx3: Tensor | None = None
            if need_x:
                grad_x, gx3 = _new_output(x, shape)
            if need_c:
                mom = torch.zeros(n + 3, shape[1], dtype=plan.dtype, device=x.device)
                mom_chunk = torch.empty_like(mom)
            pieces = _chunks(shape, ctx.chunk)
            size = x3[pieces[0][0], :, pieces[0][1]].numel()
            cast_g = g.dtype != plan.dtype
            count = 5 + int(cast_g) + (max(n - 2, 0) + 2 if need_c else 0)
            scratch = _Scratch(count, size, plan.dtype, x.device)
            for ia, ib in pieces:
                xs = x3[ia, :, ib]
                bufs = scratch.get(xs.shape)
                e, t, s, pw, acc = bufs[:5]
                _coords_into(plan, xs, e, t, s)
                gs = g3[ia, :, ib]
                if cast_g:
                    gs = bufs[5].copy_(gs)
                if gx3 is not None:
                    _slope_into(plan, t, s, pw, acc)
                    torch.mul(gs, acc, out=gx3[ia, :, ib])
                if mom is not None:
                    _moments_into(plan, gs, t, s, e, bufs[5 + int(cast_g) :], mom_chunk)
                    mom.add_(mom_chunk)
        grad_c0: Tensor | None = None
        grad_incs: Tensor | None = None
        if mom is not None:
            if c0.shape[0] == 1 and mom.shape[1] != 1:  # shared coefficients
                mom = mom.sum(dim=1, keepdim=True)
            gc0, gi = _grads_from_moments(mom, binom, n)
            grad_c0 = gc0.to(c0.dtype) if need_c0 else None
            grad_incs = gi.to(incs.dtype) if need_incs else None
        return grad_x, grad_c0, grad_incs, None, None, None, None, None, None


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
            z[idx] = torch.linalg.lstsq(sub, rhs[idx].unsqueeze(1)).solution.squeeze(1)
            if bool((z[idx] > 0).all()):
                v = z
                break
            bad = passive & (z <= 0)
            alpha = float((v[bad] / (v[bad] - z[bad])).min())
            v = v + alpha * (z - v)
            passive &= v > 0
            v[~passive] = 0.0
    return v


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
    :meth:`init_from`. ``chunk_elements`` (attribute, 0 disables) sets how many elements are
    processed per cache-sized block on the eager path; torch.compile traces one block.
    """

    chunk_elements: int
    _binom: Tensor
    _binom_d: Tensor

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
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"degree must be an integer ≥ 1, got {degree!r}")
        if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
            raise ValueError(f"delta must be a finite number > 0, got {delta!r}")
        if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
            raise ValueError(f"need finite lower < upper, got lower={lower!r}, upper={upper!r}")
        if num_features is not None and (
            isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1
        ):
            raise ValueError(f"num_features must be None or an integer ≥ 1, got {num_features!r}")
        self.degree = degree
        self.delta = float(delta)
        self.lower = float(lower)
        self.upper = float(upper)
        self.num_features = num_features
        self.feature_dim = int(feature_dim)
        self.chunk_elements = 1 << 16
        rows = 1 if num_features is None else num_features
        self.c0 = nn.Parameter(torch.zeros(rows))
        self.theta = nn.Parameter(torch.zeros(rows, degree))
        # Integer buffers: follow .to(device) but are never cast by .to(dtype)/.half().
        binom = torch.tensor([math.comb(degree, k) for k in range(degree + 1)])
        binom_d = torch.tensor([math.comb(degree - 1, k) for k in range(degree)])
        self.register_buffer("_binom", binom, persistent=False)
        self.register_buffer("_binom_d", binom_d, persistent=False)
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
        return 0 if torch.compiler.is_compiling() else self.chunk_elements

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
        out: Tensor = _BernsteinFunction.apply(  # type: ignore[no-untyped-call]
            x,
            self.c0,
            self.increments,
            self._binom,
            self._binom_d,
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
        plan = _Plan(
            self.c0,
            self.increments,
            self._binom,
            self._binom_d,
            self.lower,
            self.upper,
            _compute_dtype(x.dtype),
        )
        shape = _layout(x, self.feature_dim)
        x3 = _as3d(x, shape)
        chunk = self._chunk()
        if chunk <= 0:
            t, s, _ = _coords(plan, x3)
            return _slope(plan, t, s).view(x.shape)
        out = torch.empty(x.shape, dtype=plan.dtype, device=x.device)
        out3 = out.view(shape)
        pieces = _chunks(shape, chunk)
        scratch = _Scratch(5, x3[pieces[0][0], :, pieces[0][1]].numel(), plan.dtype, x.device)
        for ia, ib in pieces:
            xs = x3[ia, :, ib]
            e, t, s, pw, acc = scratch.get(xs.shape)
            _coords_into(plan, xs, e, t, s)
            _slope_into(plan, t, s, pw, acc)
            out3[ia, :, ib].copy_(acc)
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

    def extra_repr(self) -> str:
        return (
            f"degree={self.degree}, delta={self.delta}, range=({self.lower}, {self.upper}), "
            f"num_features={self.num_features}, feature_dim={self.feature_dim}"
        )
