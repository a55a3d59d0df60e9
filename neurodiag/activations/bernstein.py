"""Monotone Bernstein-polynomial activation with a provable lower bound on its slope.

σ(x; l, u, c) = Σ_{k=0..n} c_k · C(n,k) (x−l)^k (u−x)^{n−k} / (u−l)^n on [l, u] (Deep Bernstein
Networks, arXiv 2602.04264; DeepBern-Nets, AAAI 2024). With c_{k+1} − c_k ≥ δ the derivative
σ'(x) = n/(u−l) · Σ_k (c_{k+1} − c_k) · b_{n−1,k}(x) is a convex combination of increments and
can never fall below δ̄ = n·δ/(u−l): a neuron using it cannot die.

Two implementations: the reference (:mod:`bernstein_reference`, plain PyTorch ops, fused by
Inductor), and for eager float32 on CPU the C kernels of the ``neurodiag::bernstein`` op
(:mod:`native`), kept as ``benchmarks/overhead.py --models d`` measures them > 1.3× the eager
reference. Neither clamps the slope; :meth:`Bernstein.derivative` evaluates it from a float64
table, so the δ̄ check can fail (docs/metrics.md). x and the small table are saved for backward.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurodiag.activations import bernstein_reference as ref
from neurodiag.activations import native

__all__ = ["Bernstein", "use_compiled_kernels"]

_INIT_MARGIN = 1e-3  # init_from: increments ≥ δ·(1 + this), so θ is finite
_INIT_GRID = 2001  # init_from: points of the least-squares grid
# init_critical: σ'(0) = Φ(b) = 1/sqrt(2).
_HALF_SQRT2 = 1.0 / math.sqrt(2.0)
_CRITICAL_SHIFT = statistics.NormalDist().inv_cdf(_HALF_SQRT2)


class _Compiled:
    """The reference forward (and backward) compiled once for all layers; eager after a failure."""

    def __init__(self) -> None:
        self.value: Callable[..., Tensor] | None = None
        self.failed: str | None = None

    def run(self, kernel: str, eager: Callable[..., Any], *args: Any) -> Any:
        if self.failed is not None:
            return eager(*args)
        self.value = self.value or torch.compile(_forward, fullgraph=True)
        modes = torch._C._len_torch_function_stack()  # a scan's mode would see only arithmetic
        try:
            with torch._C.DisableTorchFunction() if modes else contextlib.nullcontext():
                return getattr(self, kernel)(*args)
        except Exception as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            self.failed = f"{type(error).__name__}: {' '.join(lines[:2])[:200]}"
            message = (
                f"Bernstein.compiled_kernel: torch.compile failed, running eagerly ({self.failed})"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return eager(*args)


_COMPILED = _Compiled()


@functools.lru_cache(maxsize=256)
def _scalar(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(value, dtype=dtype, device=device)


def _forward(
    x: Tensor, c0: Tensor, incs: Tensor, conversion: Tensor, scale: Any, shift: Any, fd: int
) -> Tensor:
    """σ(x) by the reference with plain autograd (torch.compile, torch.func): Inductor fuses it."""
    dtype = ref.compute_dtype(x.dtype, incs.shape[1], x.device)
    table = ref.coefficient_table(c0, incs, conversion, dtype)
    return ref.value(x.to(dtype), table, scale, shift, fd).to(x.dtype)


def _checked(value: Any, message: str, count: bool = False) -> float:
    """value as an int ≥ 1 (count) or a finite float, else ValueError(message)."""
    try:
        number = operator.index(value) if count else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number >= 1 if count else math.isfinite(number)):
        raise ValueError(f"{message}, got {value!r}")
    return number


def _ramp(v: Tensor) -> Tensor:
    """E[max(v + N, 0)] for N ~ N(0, 1), i.e. v·Φ(v) + φ(v): a ReLU smoothed by a Gaussian."""
    cdf: Tensor = torch.special.ndtr(v)
    return v * cdf + torch.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)


def _nnls(a: Tensor, b: Tensor) -> Tensor:
    """min ||a v − b|| subject to v ≥ 0: Lawson–Hanson active set on the (k×k, k a few dozen
    at most) normal equations."""
    gram, rhs = a.t() @ a, a.t() @ b
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
            z[idx] = torch.tensor(
                _solve(gram[idx][:, idx].tolist(), rhs[idx].tolist()), dtype=v.dtype
            )
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
    """``a x = b`` by Gaussian elimination with partial pivoting in Python floats: the same bits in
    every process (LAPACK did not); a pivot below 1e-13 of the largest gives an unknown of 0."""
    k = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    scale = max((abs(m[i][i]) for i in range(k)), default=0.0) or 1.0
    pivots: list[int | None] = []
    for col in range(k):
        row = sum(p is not None for p in pivots)
        best = max(range(row, k), key=lambda r: abs(m[r][col]), default=None)
        if best is None or abs(m[best][col]) <= 1e-13 * scale:
            pivots.append(None)
            continue
        m[row], m[best] = m[best], m[row]
        for r in range(row + 1, k):
            if factor := m[r][col] / m[row][col]:
                m[r][col:] = [v - factor * p for v, p in zip(m[r][col:], m[row][col:])]
        pivots.append(row)
    x = [0.0] * k
    for col in reversed(range(k)):
        if (p := pivots[col]) is not None:
            x[col] = (m[p][k] - sum(m[p][c] * x[c] for c in range(col + 1, k))) / m[p][col]
    return x


class Bernstein(nn.Module):
    """Learnable monotone Bernstein activation whose slope is ≥ δ̄ = n·δ/(u−l) everywhere.

    Defaults follow Deep Bernstein Networks (arXiv 2602.04264): degree n = 9, δ = 0.01, range
    [l, u] = [−5, 5], δ̄ = 0.009. Coefficients c_0 = ``c0``, c_{k+1} = c_k + δ + softplus(θ_k):
    monotone with margin δ for *any* parameter values, after every optimiser step. Outside
    [l, u] σ continues linearly with its boundary slope: C¹ at l and u, σ' ≥ δ̄ on the whole
    real line, so out-of-range inputs cannot kill a neuron either.
    ``num_features=None`` shares one coefficient set, else each entry along ``feature_dim`` has
    its own (1 for (N, F), (N, C, ...); -1 for (N, T, F)). New modules start as the monotone
    least-squares fit to ReLU. ``native_kernel`` (default True): eager float32 CPU calls use C;
    ``compiled_kernel`` (:func:`use_compiled_kernels`): the reference compiled once per input
    shape for all layers (eager, with a warning, if that fails); ``chunk_elements``: ignored.
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
        self.degree = int(_checked(degree, "degree must be an integer ≥ 1", True))
        named = zip(("delta", "lower", "upper"), (delta, lower, upper))
        self.delta, self.lower, self.upper = (
            _checked(v, f"{k} must be a finite number") for k, v in named
        )
        if self.delta <= 0:
            raise ValueError(f"delta must be > 0 (the guaranteed slope margin), got {delta!r}")
        if not self.lower < self.upper:
            raise ValueError(f"need lower < upper for the range [l, u], got [{lower!r}, {upper!r}]")
        if num_features is not None:
            text = "num_features must be None or an integer ≥ 1"
            num_features = int(_checked(num_features, text, True))
        self.num_features = num_features
        self.feature_dim = operator.index(feature_dim)
        self.chunk_elements = None
        self.compiled_kernel = False
        self.c0 = nn.Parameter(torch.zeros(self.num_features or 1))
        self.theta = nn.Parameter(torch.zeros(self.num_features or 1, self.degree))
        # An integer buffer follows .to(device) but is never cast by .to(dtype)/.half(); its
        # float64 copy per device is made once (see _conversion).
        conversion = torch.tensor(ref.conversion_matrix(self.degree), dtype=torch.int64)
        self.register_buffer("_conversion_int", conversion, persistent=False)
        self._conversion_wide: Tensor | None = None
        self.init_from(torch.relu)

    @property
    def increments(self) -> Tensor:
        """c_{k+1} − c_k = δ + softplus(θ_k) ≥ δ, shape (F, n), in at least float32 (in bf16
        the sum could round to just below δ)."""
        theta = self.theta
        return F.softplus(theta.to(ref.compute_dtype(theta.dtype))) + self.delta

    @property
    def coefficients(self) -> Tensor:
        """The control coefficients c, shape (F, n+1) (F = 1 when shared)."""
        rest = self.c0.unsqueeze(1) + torch.cumsum(self.increments, dim=1)
        return torch.cat([self.c0.unsqueeze(1), rest], dim=1)

    @property
    def delta_bar(self) -> float:
        """Guaranteed lower bound n·δ/(u−l) on σ' over the whole real line."""
        return self.degree * self.delta / (self.upper - self.lower)

    def _conversion(self) -> Tensor:
        """The exact integer matrix of :func:`conversion_matrix` in float64 on its device."""
        ints = self._conversion_int
        wide = self._conversion_wide
        if wide is None or wide.device != ints.device:
            wide = ints.to(ref.table_dtype(ints.device))
            if not torch.compiler.is_compiling():
                self._conversion_wide = wide
        return wide

    def _check(self, x: Tensor) -> None:
        if not x.is_floating_point():
            raise TypeError(f"Bernstein needs a floating-point input, got {x.dtype}")
        fd = 0 if x.ndim == 1 else self.feature_dim
        found = 1 if x.ndim == 0 else x.shape[fd] if -x.ndim <= fd < x.ndim else -1
        if self.num_features is not None and found != self.num_features:
            where = f"along dim {self.feature_dim} of an input of shape {tuple(x.shape)}"
            raise ValueError(f"expected {self.num_features} features {where}, found {found}")

    def _native(self, x: Tensor) -> bool:
        """Whether forward runs the C kernels (eager, float32 contiguous CPU, degree ≤ 16)."""
        eager = self.native_kernel and not (self.compiled_kernel or torch.compiler.is_compiling())
        return eager and native.fits(x, self.c0, self.theta) and native.kernels() is not None

    def forward(self, x: Tensor) -> Tensor:
        """Eagerly the ``neurodiag::bernstein`` op; under torch.compile, ``compiled_kernel`` and
        torch.func (the op's autograd.Function has no vmap rule; no public check exists)
        the reference with plain autograd."""
        self._check(x)
        args = (x, self.c0, self.increments, self._conversion())
        plain = torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
        if not (plain or self.compiled_kernel):
            op_args = (self.lower, self.upper, self.feature_dim, self.native_kernel)
            return native.BernsteinFunction.apply(*args, *op_args)  # type: ignore[no-any-return,no-untyped-call]
        scale, shift = ref.scale_shift(self.lower, self.upper)
        if plain or type(x) is not Tensor:
            return _forward(*args, scale, shift, self.feature_dim)
        dtype = ref.compute_dtype(x.dtype, self.degree, x.device)
        scalars = [_scalar(v, dtype, x.device) for v in (scale, shift)]
        return _COMPILED.run("value", _forward, *args, *scalars, self.feature_dim)  # type: ignore[no-any-return]

    @torch.no_grad()
    def derivative(self, x: Tensor) -> Tensor:
        """Elementwise σ'(x) (the boundary slope outside [l, u]): what a scan measures as
        min |σ'| and checks against δ̄. Never clamped, from a float64 table (float32 on MPS);
        in x's dtype, but float32 for half-precision x (bf16 rounding could hide δ̄)."""
        self._check(x)
        dtype = ref.table_dtype(x.device)  # float64: the slope to ~1e-8 relative
        table = ref.coefficient_table(self.c0, self.increments, self._conversion(), dtype)
        scale, shift = ref.scale_shift(self.lower, self.upper)
        g = torch.ones((), dtype=dtype, device=x.device)  # σ' = ∂σ/∂x with g = 1
        slope, _ = ref.backward(g, x.to(dtype), table, scale, shift, self.feature_dim, True, False)
        assert slope is not None
        return slope.to(ref.compute_dtype(x.dtype, self.degree, x.device))

    @torch.no_grad()
    def init_from(self, fn: Callable[[Tensor], Tensor]) -> Bernstein:
        """Fit σ to ``fn`` on [l, u] under the monotone constraint; every neuron gets the same fit.

        So a trained model's ReLU/GELU can be swapped. Increments δ' + v_k (δ' = δ·(1 + 1e-3),
        v ≥ 0): σ = c_0 + δ'·n·t + Σ_k v_k·G_k(t), G_k = Σ_{j>k} b_{n,j}; least squares on 2001
        points is exact non-negative least squares in v (c_0 free). Max error (defaults): 0.35
        for ReLU, 0.28 for GELU (the Bernstein operator: 0.68, 0.58), roughly ∝ u − l.
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
        extra = v + (delta - self.delta)
        theta = extra + torch.log(-torch.expm1(-extra))  # softplus⁻¹(extra)
        self.c0.copy_(c0.expand_as(self.c0))
        self.theta.copy_(theta.expand_as(self.theta))
        return self

    @torch.no_grad()
    def init_critical(self) -> Bernstein:
        """Start in a shape a deep He-initialised network trains through from scratch.

        Target (fitted by :meth:`init_from`): σ'(x) = Φ((x − m)/w + b), a ReLU step at the
        middle m of [l, u] smoothed to width w = 0.75·(u−l)/sqrt(n−1), σ'(m) = 1/sqrt(2),
        σ(m) = 0: 2·E[σ'(z)²] ≈ 1 for z ~ N(m, s²) at every scale s (0.92-1.08, degrees 2-25),
        so He-initialised layers pass the squared gradient on, as with ReLU (the ReLU fit gives
        0.57 at s = 1: a 50-layer MLP from it collapses). Degree 1: σ(x) = (x − m)/sqrt(2).
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
        head = f"degree={self.degree}, delta={self.delta}, range=({self.lower}, {self.upper})"
        return f"{head}, num_features={self.num_features}, feature_dim={self.feature_dim}"


def use_compiled_kernels(model: nn.Module, enabled: bool = True) -> int:
    """Set ``compiled_kernel`` on every :class:`Bernstein` in ``model``; returns how many."""
    layers = [module for module in model.modules() if isinstance(module, Bernstein)]
    for module in layers:
        module.compiled_kernel = enabled
    return len(layers)
