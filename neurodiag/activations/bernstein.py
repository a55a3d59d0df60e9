"""Monotone Bernstein-polynomial activation with a provable lower bound on its slope.

σ(x; l, u, c) = Σ_{k=0..n} c_k · C(n,k) (x−l)^k (u−x)^{n−k} / (u−l)^n on [l, u] (Deep Bernstein
Networks, arXiv 2602.04264; DeepBern-Nets, AAAI 2024). Because the coefficients are
re-parameterised so that c_{k+1} − c_k ≥ δ, the derivative
σ'(x) = n/(u−l) · Σ_k (c_{k+1} − c_k) · b_{n−1,k}(x) is a convex combination of increments and
can never fall below δ̄ = n·δ/(u−l): a neuron using it cannot die.

How it is evaluated, and why. Eager PyTorch pays one pass over the tensor per op, so the cost
is the number of ops. Each call converts the n+1 Bernstein coefficients, once per feature, into
the monomial coefficients of the same polynomial in u = (2x − l − u)/(u − l) ∈ [−1, 1] (exact
integer matrices, float64), and evaluates that by Horner's rule: one fused multiply-add per
degree, where the Bernstein recurrences needed three. Centred on [−1, 1] the monomial basis is
well conditioned for the degrees used here: measured float32 error of σ relative to its range
≤ 1e-6 up to degree 16 (random and trained coefficients), so higher degrees are evaluated in
float64. The slope is Horner's rule on the derivative's coefficients, never clamped: ∂L/∂x is
the slope of the polynomial forward evaluates, so a layer whose coefficients break the monotone
parameterisation (a subclass, a bug) passes its true, smaller slope on, and
:meth:`Bernstein.derivative` (what a scan measures) evaluates that slope from a float64 table, so
min |σ'| is the layer's real slope to ~1e-8 relative, and the δ̄ check can fail. (In float32 the
monomial table's rounding moves the training slope by up to ~3e-3 of δ̄ at degree 16 with extreme
coefficients, 1.5e-4 at degree 9: measured, see docs/metrics.md.) The backward pass recomputes
from x (only x and the tiny coefficient table are saved) and gets the coefficient gradients
from the power sums Σ g·u^j, mapped back through the same integer matrix. Outside [l, u], σ
continues linearly with its boundary slope: σ = P(±1) + e·slope with e the overshoot, never
∞ − ∞, and full relative precision far out.

Eagerly on CPU in float32 (the common case), both passes run as native kernels: one C call
each way (native.py builds bernstein_kernel.c on first use), the coefficient table and the
parameter gradients included, split over the intra-op threads on large inputs. Elsewhere (other
dtypes and devices, strided inputs, a missing C compiler) the PyTorch kernels below run: large
CPU inputs in cache-sized chunks with buffers reused across calls (a fresh buffer over 128 KB
costs page faults each time); off CPU, and under ``torch.compile``, each op once over the whole
tensor. ``Bernstein.compiled_kernel`` runs those kernels compiled once per input shape, shared
by all layers. Figures against GELU: ``benchmarks/overhead.py --models d`` (measured on 2 CPU
threads: native 2.1× GELU at (256, 100) and 1.35× at (64, 128, 32, 32); the PyTorch kernels
5.7× and 2.3×, where per-op dispatch dominates on the small shape).
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import statistics
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from neurodiag.activations import native

__all__ = ["Bernstein", "use_compiled_kernels"]

# Extra slack above δ that init_from gives every increment, so θ = softplus⁻¹(increment − δ)
# is finite; relative to δ, so it never visibly changes the fitted shape.
_INIT_MARGIN = 1e-3
# Points of the least-squares grid used by init_from.
_INIT_GRID = 2001
# Elements per thread in one chunk of the eager kernels (measured best on CPU: 64K-128K).
_CHUNK_PER_THREAD = 1 << 16
# Highest degree evaluated in float32 (see the module docstring); above it, float64.
_FLOAT32_MAX_DEGREE = 16
# init_critical: σ'(0) = Φ(b) = 1/sqrt(2).
_HALF_SQRT2 = 1.0 / math.sqrt(2.0)
_CRITICAL_SHIFT = statistics.NormalDist().inv_cdf(_HALF_SQRT2)


def _compute_dtype(
    dtype: torch.dtype, degree: int = 1, device: torch.device | None = None
) -> torch.dtype:
    """float32 for float32 and half-precision inputs (the polynomial loses too much in bf16),
    float64 for float64 inputs and for degrees above _FLOAT32_MAX_DEGREE (MPS has no float64)."""
    if dtype == torch.float64:
        return dtype
    if degree > _FLOAT32_MAX_DEGREE and (device is None or device.type != "mps"):
        return torch.float64
    return torch.float32


def _table_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _conversion_matrix(n: int) -> list[list[int]]:
    """Integer (n, 2n+3) matrix C with table = 2^−n · increments @ C (plus c_0 in column 0).

    With t = (1+u)/2, 2^n·b_{n,k}(t) = C(n,k)(1+u)^k(1−u)^{n−k} has integer coefficients, and
    σ = c_0 + Σ_i inc_i·Σ_{k>i} b_{n,k} because Σ_k b_{n,k} = 1; so the monomial coefficients
    a_j of σ in u, and d_j = (j+1)·a_{j+1} of dσ/du, are exact integer combinations of the
    increments. Columns: a_0..a_n; d_0..d_{n−1}; dσ/du at u = −1 and at u = +1 (the boundary
    slopes n/2·inc_0 and n/2·inc_{n−1}).
    """
    basis = []
    for k in range(n + 1):
        poly = [math.comb(n, k)]
        for factor in [1] * k + [-1] * (n - k):  # multiply by (1 + u) or (1 − u)
            poly = [a + factor * b for a, b in zip([*poly, 0], [0, *poly])]
        basis.append(poly)
    rows = []
    for i in range(n):
        a = [sum(basis[k][j] for k in range(i + 1, n + 1)) for j in range(n + 1)]
        d = [(j + 1) * a[j + 1] for j in range(n)]
        s_lo = n << (n - 1) if i == 0 else 0
        s_hi = n << (n - 1) if i == n - 1 else 0
        rows.append([*a, *d, s_lo, s_hi])
    return rows


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


class _Pool(threading.local):
    """Per-thread CPU scratch memory kept between calls, one block per dtype.

    A fresh CPU buffer over glibc's mmap threshold (128 KB) comes from new zeroed pages on
    every call, which cost as much as the arithmetic on a (256, 100) input. Kept per thread,
    so concurrent callers never share a buffer; at most count·chunk elements per dtype.
    """

    def __init__(self) -> None:
        self.blocks: dict[torch.dtype, Tensor] = {}


_POOL = _Pool()


def _in_functorch_transform() -> bool:
    """torch.func transforms refuse in-place writes to tensors made outside them (the pool)."""
    return bool(torch._C._are_functorch_transforms_active())


def _plain_dispatch(x: Tensor) -> bool:
    """A plain tensor, no torch.func transform, no dispatch mode: the compiled kernels would
    trace those, or refuse to. (Torch function modes, such as neurodiag's own while it
    measures, are switched off around the kernels: they only see elementwise arithmetic.)"""
    return type(x) is Tensor and not (
        _in_functorch_transform() or torch._C._len_torch_dispatch_stack()
    )


class _Scratch:
    """`count` chunk-sized buffers, re-viewed per chunk shape; pooled on CPU."""

    def __init__(self, count: int, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        need = count * numel
        if device.type == "cpu" and not _in_functorch_transform():
            block = _POOL.blocks.get(dtype)
            if block is None or block.numel() < need:
                block = torch.empty(need, dtype=dtype)
                _POOL.blocks[dtype] = block
            self.base = block[:need].view(count, numel)
        else:
            self.base = torch.empty(count, numel, dtype=dtype, device=device)
        self.cache: dict[tuple[int, ...], Tensor] = {}

    def get(self, shape: torch.Size) -> Tensor:
        """All buffers as one (count, *shape) view: index it, or slice pairs of rows."""
        key = tuple(shape)
        view = self.cache.get(key)
        if view is None:
            base = self.base
            m = math.prod(key)
            view = (base if m == base.shape[1] else base[:, :m]).view(len(base), *key)
            self.cache[key] = view
        return view


@functools.lru_cache(maxsize=256)
def _cpu_scalar(value: float, dtype: torch.dtype) -> Tensor:
    """A cached 0-d CPU tensor: broadcasts against tensors on any device without a transfer.

    In the compute dtype, so that no op has to cast it (a per-op copy, costly on small inputs).
    """
    return torch.tensor(value, dtype=dtype)


def _plan_table(c0: Tensor, incs: Tensor, conversion: Tensor, dtype: torch.dtype) -> Tensor:
    """The per-feature coefficients of :class:`_Plan` as one contiguous (2n+3, F, 1) tensor.

    One small matmul in float64 (exact integer matrix, exact 2^−n scale), built once per
    forward and handed to backward as a saved tiny tensor.
    """
    n = incs.shape[1]
    wide = conversion.dtype
    table = torch.mm(conversion.t(), incs.t().to(wide)).mul_(2.0**-n)
    table[0].add_(c0.to(wide))
    return table.to(dtype).unsqueeze(-1)


def _layer_scalars(lower: float, upper: float) -> tuple[float, float]:
    """(scale, shift): u = x·scale + shift maps [l, u] onto [−1, 1]."""
    half_width = 0.5 * (upper - lower)
    return 1.0 / half_width, -0.5 * (lower + upper) / half_width


class _Plan:
    """Per-call scalars and the rows of the (2n+3, F, 1) table, each broadcasting on (a, F, b)."""

    def __init__(
        self,
        table: Tensor,
        degree: int,
        lower: float,
        upper: float,
        dtype: torch.dtype,
    ) -> None:
        n = degree
        self.n = n
        self.dtype = dtype
        self.scale, self.shift_value = _layer_scalars(lower, upper)
        # Eagerly, 0-d CPU tensors let one fused op take a scalar operand; Dynamo would only
        # trace through their cache, and Inductor fuses the plain arithmetic anyway.
        self.fused = not torch.compiler.is_compiling()
        if self.fused:
            self.shift = _cpu_scalar(self.shift_value, dtype)
            self.zero = _cpu_scalar(0.0, dtype)
        self.set_rows(table)

    def set_rows(self, table: Tensor) -> None:
        """The coefficient rows of the (2n+3, F, 1) table, as views."""
        n = self.n
        rows = table.unbind(0)
        self.a = rows[: n + 1]  # σ(u) = Σ a_j u^j inside [−1, 1]
        self.d = rows[n + 1 : 2 * n + 1]  # dσ/du = Σ d_j u^j
        self.slope_lo, self.slope_hi = rows[2 * n + 1 :]  # dσ/du at u = −1 and u = +1


# ---------------------------------------------------------------------------------------------
# Functional kernels: one pass over the whole tensor, allocation per op. Used off CPU and under
# torch.compile, where Inductor fuses each of them into one loop.
# ---------------------------------------------------------------------------------------------


def _coords(plan: _Plan, x: Tensor) -> tuple[Tensor, Tensor]:
    """z = (2x − l − u)/(u − l), unclamped, and u = clamp(z, −1, 1)."""
    x = x.to(plan.dtype)
    if plan.fused:
        z = torch.add(plan.shift, x, alpha=plan.scale)
    else:
        z = x * plan.scale + plan.shift_value
    return z, z.clamp(-1.0, 1.0)


def _horner(rows: Sequence[Tensor], u: Tensor) -> Tensor:
    acc = rows[0] + 0.0 * u if len(rows) == 1 else torch.addcmul(rows[-2], u, rows[-1])
    for row in reversed(rows[:-2]):
        acc = torch.addcmul(row, acc, u)
    return acc


def _value(plan: _Plan, x: Tensor) -> Tensor:
    """σ(x) = P(u) + min(e, 0)·slope_lo + max(e, 0)·slope_hi, e = z − u the overshoot.

    At most one of the two terms is non-zero and the other adds an exact 0, so this is e times
    the boundary slope on its side, rounded once: never ∞ − ∞ (σ(±∞) = ±∞), full relative
    precision far outside. (torch.lerp between the two slopes gave the same bits but, weighted
    by (1+u)/2 ≈ 0.5, its branch on the weight cost 6× an addcmul on CPU.)
    """
    z, u = _coords(plan, x)
    e = z - u
    acc = torch.addcmul(_horner(plan.a, u), e.clamp(max=0.0), plan.slope_lo)
    return torch.addcmul(acc, e.clamp(min=0.0), plan.slope_hi)


def _slope_u(plan: _Plan, u: Tensor) -> Tensor:
    """dσ/du at the clamped u (the boundary slope outside), as computed: never clamped."""
    return _horner(plan.d, u)


def _moments(plan: _Plan, g: Tensor, z: Tensor, u: Tensor) -> Tensor:
    """The n+3 rows Σg·u^j (j = 0..n), Σg·min(e, 0), Σg·max(e, 0), each reduced to (F,)."""
    rows = [g]
    gu = g
    for _ in range(plan.n):
        gu = gu * u
        rows.append(gu)
    e = z - u
    rows.append(g * e.clamp(max=0.0))
    rows.append(g * e.clamp(min=0.0))
    return torch.stack([r.sum(dim=(0, 2)) for r in rows])


# ---------------------------------------------------------------------------------------------
# Chunked kernels (eager CPU): the same arithmetic on cache-sized blocks, into reused buffers.
# ---------------------------------------------------------------------------------------------


def _coords_into(plan: _Plan, x: Tensor, z: Tensor, u: Tensor) -> None:
    if x.dtype == plan.dtype:
        torch.add(plan.shift, x, alpha=plan.scale, out=z)
    else:  # compute in the compute dtype, not in bf16
        z.copy_(x)
        torch.add(plan.shift, z, alpha=plan.scale, out=z)
    torch.clamp(z, -1.0, 1.0, out=u)


def _horner_into(rows: Sequence[Tensor], u: Tensor, acc: Tensor) -> None:
    if len(rows) == 1:  # degree-1 slope: a constant, NaN where u is NaN as in _horner
        torch.mul(u, 0.0, out=acc).add_(rows[0])
        return
    if u.shape[-1] > 1:
        # a_{n−1} + u·a_n as mul then add: addcmul with two operands broadcast along the inner
        # (spatial) dim takes a slow loop, ~4× either op on (C, H·W) chunks.
        torch.mul(u, rows[-1], out=acc).add_(rows[-2])
    else:
        torch.addcmul(rows[-2], u, rows[-1], out=acc)
    for row in reversed(rows[:-2]):
        torch.addcmul(row, acc, u, out=acc)


def _value_into(plan: _Plan, x: Tensor, out: Tensor, buf: Tensor) -> None:
    """Chunked :func:`_value`; buf: 3 rows (z, u, acc)."""
    z, u, acc = buf[0], buf[1], buf[2]
    _coords_into(plan, x, z, u)
    _horner_into(plan.a, u, acc)
    z.sub_(u)  # e
    torch.clamp(z, max=0.0, out=u)
    acc.addcmul_(u, plan.slope_lo)
    z.clamp_(min=0.0)
    torch.addcmul(acc, z, plan.slope_hi, out=out)


def _backward_into(
    plan: _Plan,
    x: Tensor,
    g: Tensor,
    grad_x: Tensor | None,
    mom: Tensor | None,
    buf: Tensor,
) -> None:
    """Chunked backward: ∂L/∂x into grad_x, the n+3 rows of :func:`_moments` into mom.

    buf: 5 rows (z, u, acc, and a pair for the overshoot sums). Overwrites z with e.
    """
    z, u, acc = buf[0], buf[1], buf[2]
    _coords_into(plan, x, z, u)
    if grad_x is not None:
        _horner_into(plan.d, u, acc)
        # 0 + scale·g·slope in one op
        torch.addcmul(plan.zero, g, acc, value=plan.scale, out=grad_x)
    if mom is None:
        return
    dims = (0, 2)
    torch.sum(g, dim=dims, out=mom[0])
    for j in range(1, plan.n + 1):
        torch.mul(g if j == 1 else acc, u, out=acc)
        torch.sum(acc, dim=dims, out=mom[j])
    pair = buf[3:5]
    z.sub_(u)  # e
    torch.clamp(z, max=0.0, out=pair[0])
    torch.clamp(z, min=0.0, out=pair[1])
    pair.mul_(g)
    torch.sum(pair, dim=(1, 3), out=mom[plan.n + 1 :])


def _derivative_into(plan: _Plan, x: Tensor, out: Tensor, buf: Tensor) -> None:
    z, u = buf[0], buf[1]
    _coords_into(plan, x, z, u)
    _horner_into(plan.d, u, out)
    out.mul_(plan.scale)


def _grads_from_moments(mom: Tensor, conversion: Tensor, plan: _Plan) -> tuple[Tensor, Tensor]:
    """(∂L/∂c0, ∂L/∂increments) from the moment rows of :func:`_moments`.

    ∂L/∂a_j = Σg·u^j and a = 2^−n·inc @ C[:, :n+1]; the boundary slopes are n/2·inc_0 and
    n/2·inc_{n−1}, added apart so that an infinite overshoot sum never meets a zero of C (0·∞).
    """
    n = plan.n
    wide = conversion.dtype
    grad_inc = torch.mm(conversion[:, : n + 1], mom[: n + 1].to(wide)).mul_(2.0**-n)
    tail = mom[n + 1 :].to(wide)
    grad_inc[0].add_(tail[0], alpha=0.5 * n)
    grad_inc[n - 1].add_(tail[1], alpha=0.5 * n)
    return mom[0], grad_inc.t()


def _split(t3: Tensor, chunk: int) -> list[Tensor]:
    """Views of an (A, F, B) tensor covering about `chunk` elements each (whole F always).

    Chunking keeps the temporaries of the recurrences in cache instead of streaming each
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
    """σ(x) with a hand-written backward that saves only x, c0, the increments and the
    (2n+3, F, 1) coefficient table (a second, non-differentiable output, so backward need not
    rebuild it)."""

    @staticmethod
    def forward(
        x: Tensor,
        c0: Tensor,
        incs: Tensor,
        conversion: Tensor,
        lower: float,
        upper: float,
        delta: float,
        feature_dim: int,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        n = incs.shape[1]
        dtype = _compute_dtype(x.dtype, n, x.device)
        table = _plan_table(c0, incs, conversion, dtype)
        plan = _Plan(table, n, lower, upper, dtype)
        shape = _layout(x, feature_dim)
        x3 = _as3d(x, shape)
        if chunk < 0:
            scalars = _scalars(plan, x.device)
            out3 = _COMPILED.run("value", _value_kernel, x3, table, scalars)
            return out3.to(x.dtype).view(x.shape), table
        if chunk == 0:
            return _value(plan, x3).to(x.dtype).view(x.shape), table
        out, out3 = _new_output(x, shape)
        xs = _split(x3, chunk)
        scratch = _Scratch(3, xs[0].numel(), plan.dtype, x.device)
        for xc, oc in zip(xs, _split(out3, chunk)):
            _value_into(plan, xc, oc, scratch.get(xc.shape))
        return out, table

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        x, c0, incs, conversion, lower, upper, _, feature_dim, chunk = inputs
        table = output[1]
        ctx.mark_non_differentiable(table)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, c0, incs, conversion, table)
        ctx.args = (lower, upper, feature_dim, chunk)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor | None, _: Tensor | None) -> tuple[Tensor | None, ...]:
        nothing = (None,) * 9
        if g is None:  # only the table was used downstream: it has no gradient
            return nothing
        x, c0, incs, conversion, table = ctx.saved_tensors
        lower, upper, feature_dim, chunk = ctx.args
        need_x, need_c0, need_incs = ctx.needs_input_grad[:3]
        need_c = need_c0 or need_incs
        plan = _Plan(table, incs.shape[1], lower, upper, table.dtype)
        shape = _layout(x, feature_dim)
        x3 = _as3d(x, shape)
        g3 = _as3d(g, shape)
        grad_x: Tensor | None = None
        mom: Tensor | None = None
        if chunk <= 0:
            if chunk < 0:
                scalars = _scalars(plan, x.device)
                gx3, mom = _COMPILED.run(
                    "backward", _backward_kernel, x3, g3, table, scalars, need_x, need_c
                )
            else:
                gx3, mom = _backward(plan, x3, g3, need_x, need_c)
            if gx3 is not None:
                grad_x = gx3.to(x.dtype).view(x.shape)
        else:
            xs = _split(x3, chunk)
            gs = _split(g3, chunk)
            gxs: list[Tensor | None] = [None] * len(xs)
            if need_x:
                grad_x, gx3 = _new_output(x, shape)
                gxs = list(_split(gx3, chunk))
            rows = plan.n + 3
            mom_chunk: Tensor | None = None
            if need_c:
                mom = torch.empty(rows, shape[1], dtype=plan.dtype, device=x.device)
                mom_chunk = mom if len(xs) == 1 else torch.empty_like(mom)
                if len(xs) > 1:
                    mom.zero_()
            cast_g = g.dtype != plan.dtype
            scratch = _Scratch(5 + int(cast_g), xs[0].numel(), plan.dtype, x.device)
            for xc, gc, gxc in zip(xs, gs, gxs):
                buf = scratch.get(xc.shape)
                if cast_g:
                    gc = buf[5].copy_(gc)
                _backward_into(plan, xc, gc, gxc, mom_chunk, buf)
                if mom is not None and mom_chunk is not mom:
                    mom.add_(mom_chunk)  # type: ignore[arg-type]
        grad_c0: Tensor | None = None
        grad_incs: Tensor | None = None
        if mom is not None:
            if c0.shape[0] == 1 and mom.shape[1] != 1:  # shared coefficients
                mom = mom.sum(dim=1, keepdim=True)
            gc0, gi = _grads_from_moments(mom, conversion, plan)
            grad_c0 = gc0.to(c0.dtype) if need_c0 else None
            grad_incs = gi.to(incs.dtype) if need_incs else None
        return grad_x, grad_c0, grad_incs, *nothing[3:]


# torch.autograd.Function.apply binds the arguments with inspect.signature on every call
# (for setup_context-style Functions): ~15 µs, a tenth of a (256, 100) forward+backward. The
# arguments here are always positional and complete, so plain calls go straight to the C++
# apply; torch.func transforms and Dynamo keep the documented route.
_APPLY_DIRECT = torch._C._FunctionBase.__dict__["apply"].__get__(None, _BernsteinFunction)


def _apply(*args: Any) -> Any:
    if _in_functorch_transform() or torch.compiler.is_compiling():
        return _BernsteinFunction.apply(*args)  # type: ignore[no-untyped-call]
    return _APPLY_DIRECT(*args)


# ---------------------------------------------------------------------------------------------
# Native kernels (eager CPU, float32): the same arithmetic as the kernels above in one C pass
# each way (native.py builds bernstein_kernel.c), parameters to table and moments to
# gradients included, so a call costs a few ops' dispatch instead of ~70.
# ---------------------------------------------------------------------------------------------


class _NativeFunction(torch.autograd.Function):
    """σ(x) from (x, c0, θ) through the C kernels; saves x, θ and the padded table."""

    @staticmethod
    def forward(
        x: Tensor,
        c0: Tensor,
        theta: Tensor,
        conversion: Tensor,
        lib: native.Kernels,
        lower: float,
        upper: float,
        delta: float,
        feature_dim: int,
    ) -> tuple[Tensor, Tensor]:
        rows, n = theta.shape
        ld = 1 if rows == 1 else -(-rows // lib.lanes) * lib.lanes
        table = torch.empty(2 * n + 3, ld, dtype=torch.float32)
        lib.table(
            c0.data_ptr(),
            theta.data_ptr(),
            rows,
            ld,
            n,
            delta,
            conversion.data_ptr(),
            table.data_ptr(),
        )
        scale, shift = _layer_scalars(lower, upper)
        a, f, b = _layout(x, feature_dim)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        parts = _native_parts(a, x.numel())

        def run(k: int) -> None:
            lo, hi = parts[k]
            off = lo * f * b * 4  # float32 bytes
            lib.value(
                x.data_ptr() + off,
                out.data_ptr() + off,
                hi - lo,
                f,
                b,
                table.data_ptr(),
                ld,
                n,
                scale,
                shift,
            )

        _native_map(run, len(parts))
        return out, table

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        x, _, theta, conversion, lib, lower, upper, _, feature_dim = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, theta, conversion, output[1])
        ctx.args = (lib, lower, upper, feature_dim)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor | None, _: Tensor | None) -> tuple[Tensor | None, ...]:
        nothing = (None,) * 9
        if g is None:
            return nothing
        x, theta, conversion, table = ctx.saved_tensors
        lib, lower, upper, feature_dim = ctx.args
        need_x, need_c0, need_theta = ctx.needs_input_grad[:3]
        rows, n = theta.shape
        ld = table.shape[1]
        scale, shift = _layer_scalars(lower, upper)
        a, f, b = _layout(x, feature_dim)
        g = g.to(torch.float32).contiguous()
        grad_x = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else None
        parts = _native_parts(a, x.numel())
        mom = (
            torch.zeros(len(parts), n + 3, ld, dtype=torch.float64)
            if need_c0 or need_theta
            else None
        )

        def run(k: int) -> None:
            lo, hi = parts[k]
            off = lo * f * b * 4
            lib.backward(
                x.data_ptr() + off,
                g.data_ptr() + off,
                None if grad_x is None else grad_x.data_ptr() + off,
                None if mom is None else mom[k].data_ptr(),
                hi - lo,
                f,
                b,
                table.data_ptr(),
                ld,
                n,
                scale,
                shift,
            )

        _native_map(run, len(parts))
        grad_c0 = grad_theta = None
        if mom is not None:
            total = mom[0] if len(parts) == 1 else mom.sum(0)
            grad_c0 = torch.empty(rows, dtype=torch.float32) if need_c0 else None
            grad_theta = torch.empty(rows, n, dtype=torch.float32) if need_theta else None
            lib.grads(
                total.data_ptr(),
                theta.data_ptr(),
                rows,
                ld,
                n,
                conversion.data_ptr(),
                None if grad_c0 is None else grad_c0.data_ptr(),
                None if grad_theta is None else grad_theta.data_ptr(),
            )
        return grad_x, grad_c0, grad_theta, *nothing[3:]


_NATIVE_APPLY_DIRECT = torch._C._FunctionBase.__dict__["apply"].__get__(None, _NativeFunction)
# Elements per thread below which the native kernels run on the calling thread only.
_NATIVE_PER_THREAD = 1 << 17
_NATIVE_POOL: list[ThreadPoolExecutor] = []


def _native_parts(a: int, numel: int) -> list[tuple[int, int]]:
    """Ranges of the A dim, one per intra-op thread for large inputs (else one)."""
    parts = min(torch.get_num_threads(), a, numel // _NATIVE_PER_THREAD)
    if parts <= 1:
        return [(0, a)]
    bounds = [a * k // parts for k in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def _native_map(run: Callable[[int], None], count: int) -> None:
    """run(0..count-1), all but the first on a shared pool (ctypes releases the GIL)."""
    if count == 1:
        run(0)
        return
    if not _NATIVE_POOL:
        _NATIVE_POOL.append(ThreadPoolExecutor(thread_name_prefix="neurodiag-bernstein"))
    futures = [_NATIVE_POOL[0].submit(run, k) for k in range(1, count)]
    run(0)
    for future in futures:
        future.result()


def _backward(
    plan: _Plan, x3: Tensor, g3: Tensor, need_x: bool, need_c: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Unchunked backward: (∂L/∂x in the compute dtype, the moment rows), either may be None."""
    z, u = _coords(plan, x3)
    g = g3.to(plan.dtype)
    grad_x: Tensor | None = None
    if need_x:
        slope = _slope_u(plan, u)
        if plan.fused:  # 0 + scale·g·slope in one op, rounded as in the chunked path
            grad_x = torch.addcmul(plan.zero, g, slope, value=plan.scale)
        else:
            grad_x = g * slope * plan.scale
    return grad_x, (_moments(plan, g, z, u) if need_c else None)


def _derivative(plan: _Plan, x3: Tensor) -> Tensor:
    """Unchunked σ'(x) in x units."""
    return _slope_u(plan, _coords(plan, x3)[1]) * plan.scale


# ---------------------------------------------------------------------------------------------
# Compiled kernels (opt-in, Bernstein.compiled_kernel): the functional kernels above, compiled once
# per input shape and shared by every layer of that shape. The per-layer scalars travel as a
# tensor, so layers with different ranges or δ reuse the same compiled code; compiling the
# whole model instead traces every layer apart (minutes for a 50-layer net).
# ---------------------------------------------------------------------------------------------


def _kernel_plan(table: Tensor, scalars: Tensor) -> _Plan:
    """A :class:`_Plan` whose scale and shift are the rows of ``scalars``."""
    n = (table.shape[0] - 3) // 2
    plan = _Plan.__new__(_Plan)
    plan.n, plan.dtype, plan.fused = n, table.dtype, False
    plan.set_rows(table)
    plan.scale, plan.shift_value = scalars.unbind(0)  # type: ignore[assignment]
    return plan


def _value_kernel(x3: Tensor, table: Tensor, scalars: Tensor) -> Tensor:
    return _value(_kernel_plan(table, scalars), x3)


def _backward_kernel(
    x3: Tensor, g3: Tensor, table: Tensor, scalars: Tensor, need_x: bool, need_c: bool
) -> tuple[Tensor | None, Tensor | None]:
    return _backward(_kernel_plan(table, scalars), x3, g3, need_x, need_c)


class _Compiled:
    """The two kernels under torch.compile, made on first use; after a failure (no C++
    compiler, an unsupported device) every later call runs eagerly, with one warning."""

    def __init__(self) -> None:
        self.value: Callable[..., Tensor] | None = None
        self.backward: Callable[..., tuple[Tensor | None, Tensor | None]] | None = None
        self.failed: str | None = None

    def run(self, kernel: str, eager: Callable[..., Any], *args: Any) -> Any:
        if self.failed is None:
            if self.value is None:
                self.value = torch.compile(_value_kernel, fullgraph=True)
                self.backward = torch.compile(_backward_kernel, fullgraph=True)
            try:
                if torch._C._len_torch_function_stack():
                    with torch._C.DisableTorchFunction():
                        return getattr(self, kernel)(*args)
                return getattr(self, kernel)(*args)
            except Exception as error:
                lines = [line for line in str(error).splitlines() if line.strip()]
                self.failed = f"{type(error).__name__}: {' '.join(lines[:2])[:200]}"
                warnings.warn(
                    "Bernstein.compiled_kernel: torch.compile failed, running eagerly "
                    f"({self.failed})",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return eager(*args)


_COMPILED = _Compiled()


@functools.lru_cache(maxsize=256)
def _kernel_scalars(scale: float, shift: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(2, 1, 1) tensor of a layer's scale and shift, made once per layer setting (no
    host-to-device copy per call)."""
    return torch.tensor([scale, shift], dtype=dtype, device=device).view(2, 1, 1)


def _scalars(plan: _Plan, device: torch.device) -> Tensor:
    return _kernel_scalars(plan.scale, plan.shift_value, plan.dtype, device)


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
    :meth:`init_from`. ``native_kernel`` (attribute, default True) runs eager float32 CPU calls
    through the C kernels of :mod:`neurodiag.activations.native` (setting ``chunk_elements`` or
    ``compiled_kernel`` selects the PyTorch kernels instead). ``chunk_elements`` (attribute;
    None = 64K per intra-op thread, 0 = one unchunked pass) sets how many elements the eager
    CPU PyTorch path processes per cache-sized block;
    off CPU (default) and under torch.compile everything is one pass. ``compiled_kernel = True``
    (attribute, or :func:`use_compiled_kernels` on a whole model) runs the elementwise work
    through torch.compile'd kernels shared by every Bernstein layer of the same input shape:
    a few seconds of compiling per shape instead of minutes for ``torch.compile(model)``, and
    an eager fallback (with a warning) where compiling fails.
    """

    chunk_elements: int | None
    compiled_kernel: bool
    # Class default, so modules unpickled from older versions have it too.
    native_kernel: bool = True
    _conversion_int: Tensor

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
        self.compiled_kernel = False
        rows = 1 if num_features is None else num_features
        self.c0 = nn.Parameter(torch.zeros(rows))
        self.theta = nn.Parameter(torch.zeros(rows, degree))
        # An integer buffer follows .to(device) but is never cast by .to(dtype)/.half(); its
        # float64 copy per device is made once (see _conversion).
        conversion = torch.tensor(_conversion_matrix(degree), dtype=torch.int64)
        self.register_buffer("_conversion_int", conversion, persistent=False)
        self._conversion_wide: Tensor | None = None
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

    def _chunk(self, x: Tensor) -> int:
        """Elements per eager chunk; 0: one functional pass; −1: the shared compiled kernels."""
        if torch.compiler.is_compiling():
            return 0  # one pass: Inductor fuses it, chunk loops would only be unrolled
        if self.compiled_kernel and _plain_dispatch(x):
            return -1
        if self.chunk_elements is not None:
            return self.chunk_elements
        if x.device.type != "cpu":
            return 0  # accelerators: one pass per op, the caching allocator reuses memory
        # About 64K elements per thread and op keeps each thread's buffers in its L2 cache.
        return _CHUNK_PER_THREAD * torch.get_num_threads()

    def _conversion(self) -> Tensor:
        """The exact integer matrix of :func:`_conversion_matrix` in float64 on its device."""
        ints = self._conversion_int
        wide = self._conversion_wide
        if wide is None or wide.device != ints.device:
            wide = ints.to(_table_dtype(ints.device))
            if not torch.compiler.is_compiling():
                self._conversion_wide = wide
        return wide

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

    def _native(self, x: Tensor) -> native.Kernels | None:
        """The C kernels where they apply: eager, plain float32 CPU tensors, contiguous,
        degree ≤ 16, no chunk or compiled-kernel setting, ``increments`` not redefined by a
        subclass (the C table derives them from θ); else None (the PyTorch kernels)."""
        c0, theta = self.c0, self.theta
        if not (
            self.native_kernel
            and type(self).increments is Bernstein.increments  # C derives them from θ
            and self.chunk_elements is None
            and not self.compiled_kernel
            and self.degree <= _FLOAT32_MAX_DEGREE
            and x.dtype == c0.dtype == theta.dtype == torch.float32
            and x.device.type == c0.device.type == theta.device.type == "cpu"
            and x.is_contiguous()
            and c0.is_contiguous()
            and theta.is_contiguous()
            and not torch.compiler.is_compiling()
            and _plain_dispatch(x)
        ):
            return None
        return native.kernels()

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        out: Tensor
        lib = self._native(x)
        if lib is not None:
            out, _ = _NATIVE_APPLY_DIRECT(
                x,
                self.c0,
                self.theta,
                self._conversion(),
                lib,
                self.lower,
                self.upper,
                self.delta,
                self.feature_dim,
            )
            return out
        out, _ = _apply(
            x,
            self.c0,
            self.increments,
            self._conversion(),
            self.lower,
            self.upper,
            self.delta,
            self.feature_dim,
            self._chunk(x),
        )
        return out

    @torch.no_grad()
    def derivative(self, x: Tensor) -> Tensor:
        """Elementwise σ'(x) (the boundary slope outside [l, u]), same shape as x: what a scan
        measures as min |σ'| and checks against δ̄.

        Never clamped: it is the slope of the polynomial this layer's coefficients define, so
        coefficients that break the monotone parameterisation show their true slope. Evaluated
        from a float64 table (float32 on MPS), so it is that slope to ~1e-8 relative whatever
        the degree (the float32 monomial table moves it by up to ~3e-3 of δ̄; docs/metrics.md).
        The dtype is x's, except float32 for half-precision x: rounding to bf16 could otherwise
        make σ' look smaller than δ̄.
        """
        self._check(x)
        dtype = _table_dtype(x.device)
        out_dtype = _compute_dtype(x.dtype, self.degree, x.device)
        table = _plan_table(self.c0, self.increments, self._conversion(), dtype)
        plan = _Plan(table, self.degree, self.lower, self.upper, dtype)
        shape = _layout(x, self.feature_dim)
        x3 = _as3d(x, shape)
        chunk = self._chunk(x)
        if chunk <= 0:
            return _derivative(plan, x3).to(out_dtype).view(x.shape)
        out = torch.empty(x.shape, dtype=plan.dtype, device=x.device)
        out3 = out.view(shape)
        xs = _split(x3, chunk)
        scratch = _Scratch(2, xs[0].numel(), plan.dtype, x.device)
        for xc, oc in zip(xs, _split(out3, chunk)):
            _derivative_into(plan, xc, oc, scratch.get(xc.shape))
        return out.to(out_dtype)

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


def use_compiled_kernels(model: nn.Module, enabled: bool = True) -> int:
    """Set ``compiled_kernel`` on every :class:`Bernstein` in ``model``; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, Bernstein):
            module.compiled_kernel = enabled
            count += 1
    return count
