"""The Bernstein formulas, one reference implementation each, in plain PyTorch ops.

σ(x) = Σ_{k=0..n} c_k · C(n,k) (x−l)^k (u−x)^{n−k} / (u−l)^n on [l, u], linear outside. In
u = (2x − l − u)/(u − l) ∈ [−1, 1] it has exact integer monomial coefficients in the increments
c_{k+1} − c_k: Horner's rule, one multiply-add per degree, well conditioned on [−1, 1] (float32
error ≤ 1e-6 of σ's range up to degree 16; float64 above). Any device; Inductor fuses it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Scalar = float | Tensor  # a layer's scale or shift (a 0-d tensor in compiled code)
FLOAT32_MAX_DEGREE = 16  # the highest degree evaluated in float32; above it, float64


def compute_dtype(
    dtype: torch.dtype, degree: int = 1, device: torch.device | None = None
) -> torch.dtype:
    """float64 for float64 and degrees > 16 (not on MPS), else float32 (bf16 loses too much)."""
    wide = dtype == torch.float64 or degree > FLOAT32_MAX_DEGREE
    return torch.float64 if wide and (device is None or device.type != "mps") else torch.float32


def table_dtype(device: torch.device) -> torch.dtype:
    """float64 for the table σ' is measured from (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def conversion_matrix(n: int) -> list[list[int]]:
    """Integer (n, 2n+1) matrix C: columns a_0..a_n, d_0..d_{n−1} = 2^−n · increments @ C.

    With t = (1+u)/2, 2^n·b_{n,k}(t) = C(n,k)(1+u)^k(1−u)^{n−k} has integer coefficients, and
    σ = c_0 + Σ_i inc_i·Σ_{k>i} b_{n,k} because Σ_k b_{n,k} = 1; so the monomial coefficients
    a_j of σ in u (plus c_0 in a_0), and d_j = (j+1)·a_{j+1} of dσ/du, are exact integer
    combinations of the increments.
    """
    basis = []
    for k in range(n + 1):
        poly = [math.comb(n, k)]
        for factor in [1] * k + [-1] * (n - k):  # multiply by (1 + u) or (1 − u)
            poly = [a + factor * b for a, b in zip([*poly, 0], [0, *poly])]
        basis.append(poly)
    sums = [[sum(basis[k][j] for k in range(i + 1, n + 1)) for j in range(n + 1)] for i in range(n)]
    return [[*a, *[(j + 1) * a[j + 1] for j in range(n)]] for a in sums]


def scale_shift(lower: float, upper: float) -> tuple[float, float]:
    """(scale, shift): u = x·scale + shift maps [l, u] onto [−1, 1]."""
    half_width = 0.5 * (upper - lower)
    return 1.0 / half_width, -0.5 * (lower + upper) / half_width


def coefficient_table(c0: Tensor, incs: Tensor, conversion: Tensor, dtype: torch.dtype) -> Tensor:
    """The (2n+3, F) table: rows a_0..a_n of σ(u), d_0..d_{n−1} of dσ/du, the boundary slopes
    n/2·inc_0, n/2·inc_{n−1} (apart from C's zeros: autograd never meets 0·∞). 2^−n·Cᵀ·incᵀ
    (+ c_0 on row 0) in C's dtype (float64: exact), rounded once to ``dtype``."""
    n = incs.shape[1]
    inc = incs.t().to(conversion.dtype)
    body = torch.mm(conversion.t(), inc) * 2.0**-n
    rows = [body[:1] + c0.to(conversion.dtype), body[1:], inc[[0, n - 1]] * (0.5 * n)]
    return torch.cat(rows).to(dtype)


def _rows(table: Tensor, x: Tensor, feature_dim: int) -> tuple[Tensor, ...]:
    """The table's rows shaped to broadcast against x along its feature dim (a scalar if shared)."""
    if table.shape[1] == 1:
        return tuple(table.view(-1, *([1] * x.ndim)).unbind(0))
    fd = 0 if x.ndim == 1 else feature_dim % x.ndim
    return tuple(table.view(table.shape[0], -1, *([1] * (x.ndim - fd - 1))).unbind(0))


def _coords(x: Tensor, scale: Scalar, shift: Scalar) -> tuple[Tensor, Tensor]:
    """z = (2x − l − u)/(u − l), unclamped, and u = clamp(z, −1, 1) (NaN stays NaN)."""
    z = x * scale + shift
    return z, z.clamp(-1.0, 1.0)


def _horner(rows: tuple[Tensor, ...], u: Tensor) -> Tensor:
    """Σ_j rows[j]·u^j; a single row times 1, so that a NaN u still gives NaN."""
    acc = rows[-1] + 0.0 * u
    for row in reversed(rows[:-1]):
        acc = torch.addcmul(row, acc, u)  # row + acc·u in one op
    return acc


def value(x: Tensor, table: Tensor, scale: Scalar, shift: Scalar, fd: int) -> Tensor:
    """σ(x) = P(u) + min(e, 0)·slope_lo + max(e, 0)·slope_hi, e = z − u the overshoot: one term
    is an exact 0, so never ∞ − ∞ (σ(±∞) = ±∞), full precision far out. x in the table's dtype.
    """
    rows = _rows(table, x, fd)
    n = (len(rows) - 3) // 2
    z, u = _coords(x, scale, shift)
    e = z - u
    return _horner(rows[: n + 1], u) + e.clamp(max=0.0) * rows[-2] + e.clamp(min=0.0) * rows[-1]


def backward(
    g: Tensor, x: Tensor, table: Tensor, scale: Scalar, shift: Scalar, fd: int, need_x: bool,
    need_params: bool
) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    """(∂L/∂x = g·σ'(x), the (n+3, F) moments Σg·u^j (j = 0..n), Σg·min(e, 0), Σg·max(e, 0)).

    σ' = scale · dσ/du at the clamped u (g = 1 gives σ' itself), never clamped: the slope of
    what :func:`value` computes. The moments are ∂L/∂ of the table's a_j and boundary slopes
    (for :func:`parameter_grads`). Either result may be None.
    """
    rows = _rows(table, x, fd)
    n = (len(rows) - 3) // 2
    z, u = _coords(x, scale, shift)
    grad_x = g * _horner(rows[n + 1 : 2 * n + 1], u) * scale if need_x else None
    if not need_params:
        return grad_x, None
    e = z - u
    terms = [g]
    for _ in range(n):
        terms.append(terms[-1] * u)
    terms += [g * e.clamp(max=0.0), g * e.clamp(min=0.0)]
    if table.shape[1] == 1:
        return grad_x, torch.stack([t.sum() for t in terms]).unsqueeze(1)
    dims = [d for d in range(x.ndim) if d != (0 if x.ndim == 1 else fd % x.ndim)]
    return grad_x, torch.stack([t.sum(dims) if dims else t for t in terms])


def parameter_grads(mom: Tensor, conversion: Tensor) -> tuple[Tensor, Tensor]:
    """(∂L/∂c0, ∂L/∂increments) from the moments of :func:`backward`: ∂L/∂a_j = Σg·u^j, a =
    2^−n·inc @ C[:, :n+1]; the boundary slopes n/2·inc_0, n/2·inc_{n−1} are added apart, so an
    infinite overshoot sum never meets a zero of C (0·∞)."""
    n = conversion.shape[0]
    wide = conversion.dtype
    grad_inc = torch.mm(conversion[:, : n + 1], mom[: n + 1].to(wide)).mul_(2.0**-n)
    tail = mom[n + 1 :].to(wide)
    grad_inc[0].add_(tail[0], alpha=0.5 * n)
    grad_inc[n - 1].add_(tail[1], alpha=0.5 * n)
    return mom[0], grad_inc.t()
