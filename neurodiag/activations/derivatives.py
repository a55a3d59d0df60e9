"""Exact elementwise derivatives σ'(z) of standard activations, matching PyTorch autograd.

Each function takes the pre-activation ``z`` and/or the activation ``a`` (one of them may be
``None`` when the site is in-place: then only functions that can work from ``a`` are used) plus
the activation's parameters. Conventions at kinks follow PyTorch's backward formulas (ReLU'(0) = 0,
hardtanh' = 1 strictly inside (min, max), ...), so "dead" agrees with what autograd propagates.
"""

from __future__ import annotations

import torch
from torch import Tensor

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _pick(z: Tensor | None, a: Tensor | None) -> Tensor:
    if z is not None:
        return z
    assert a is not None
    return a


def relu(z: Tensor | None, a: Tensor | None) -> Tensor:
    # z > 0  <=>  relu(z) > 0, so the output works as well as the input.
    return (_pick(z, a) > 0).to(_pick(z, a).dtype)


def leaky_relu(z: Tensor | None, a: Tensor | None, negative_slope: float = 0.01) -> Tensor:
    # With a slope >= 0, a > 0 exactly where z > 0 (a negative slope needs z).
    x = _pick(z, a) if negative_slope >= 0 else z
    assert x is not None
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x > 0, one, one * negative_slope)


def hardtanh(
    z: Tensor | None, a: Tensor | None, min_val: float = -1.0, max_val: float = 1.0
) -> Tensor:
    x = _pick(z, a)  # the output is clamped to the ends, so strict inequalities agree
    return ((x > min_val) & (x < max_val)).to(x.dtype)


def threshold(z: Tensor | None, a: Tensor | None, threshold: float = 0.0) -> Tensor:
    assert z is not None
    return (z > threshold).to(z.dtype)


def elu(
    z: Tensor | None,
    a: Tensor | None,
    alpha: float = 1.0,
    scale: float = 1.0,
    input_scale: float = 1.0,
) -> Tensor:
    if z is not None:
        neg = alpha * scale * input_scale * torch.exp(z * input_scale)
        return torch.where(z > 0, torch.full_like(z, scale), neg)
    assert a is not None
    # For z <= 0: a = scale*alpha*(exp(z*is) - 1), so σ'(z) = is * (a + scale*alpha).
    return torch.where(a > 0, torch.full_like(a, scale), input_scale * (a + scale * alpha))


def selu(z: Tensor | None, a: Tensor | None) -> Tensor:
    return elu(z, a, alpha=SELU_ALPHA, scale=SELU_SCALE)


def celu(z: Tensor | None, a: Tensor | None, alpha: float = 1.0) -> Tensor:
    return elu(z, a, alpha=alpha, scale=1.0, input_scale=1.0 / alpha)


def sigmoid(z: Tensor | None, a: Tensor | None) -> Tensor:
    s = a if a is not None else torch.sigmoid(_pick(z, a))
    return s * (1 - s)


def tanh(z: Tensor | None, a: Tensor | None) -> Tensor:
    t = a if a is not None else torch.tanh(_pick(z, a))
    return 1 - t * t


def gelu(z: Tensor | None, a: Tensor | None, approximate: str = "none") -> Tensor:
    # autograd's own fused kernel (one pass; the erf/exp formula takes five and ~2x the time)
    assert z is not None
    out: Tensor = torch.ops.aten.gelu_backward(torch.ones_like(z), z, approximate=approximate)
    return out


def silu(z: Tensor | None, a: Tensor | None) -> Tensor:
    # autograd's own fused kernel: σ(z)(1 + z(1 − σ(z)))
    assert z is not None
    out: Tensor = torch.ops.aten.silu_backward(torch.ones_like(z), z)
    return out


def softplus(
    z: Tensor | None, a: Tensor | None, beta: float = 1.0, threshold: float = 20.0
) -> Tensor:
    assert z is not None
    return torch.where(z * beta > threshold, torch.ones_like(z), torch.sigmoid(z * beta))


def mish(z: Tensor | None, a: Tensor | None) -> Tensor:
    assert z is not None
    t = torch.tanh(torch.nn.functional.softplus(z))
    return t + z * torch.sigmoid(z) * (1 - t * t)


def hardswish(z: Tensor | None, a: Tensor | None) -> Tensor:
    assert z is not None
    # PyTorch's backward: x <= -3 -> 0; x < 3 -> x/3 + 0.5; else 1.
    return torch.where(z <= -3, torch.zeros_like(z), torch.where(z < 3, z / 3 + 0.5, 1.0))


def hardsigmoid(z: Tensor | None, a: Tensor | None) -> Tensor:
    assert z is not None
    return ((z > -3) & (z < 3)).to(z.dtype) / 6


def logsigmoid(z: Tensor | None, a: Tensor | None) -> Tensor:
    assert z is not None
    return torch.sigmoid(-z)


def softsign(z: Tensor | None, a: Tensor | None) -> Tensor:
    assert z is not None
    d = 1 + z.abs()
    return 1 / (d * d)


def tanhshrink(z: Tensor | None, a: Tensor | None) -> Tensor:
    assert z is not None
    t = torch.tanh(z)
    return t * t


def prelu(z: Tensor | None, a: Tensor | None, weight: Tensor | None = None) -> Tensor:
    x = _pick(z, a)
    assert weight is not None
    w = weight
    if w.numel() > 1 and x.dim() >= 2:
        w = w.reshape((1, -1) + (1,) * (x.dim() - 2))
    return torch.where(x > 0, torch.ones((), dtype=x.dtype, device=x.device), w.to(x.dtype))


def nrelu(z: Tensor | None, a: Tensor | None) -> Tensor:
    # N-ReLU: the noise that replaces negative inputs in training does not depend on z, so the
    # derivative is ReLU's; it needs z because in training a > 0 can come from a negative z.
    assert z is not None
    return (z > 0).to(z.dtype)


def golu(z: Tensor | None, a: Tensor | None) -> Tensor:
    # d/dz z·exp(−e^{−z}) = exp(−e^{−z}) + z·exp(−z − e^{−z}); the second term is written as one
    # exp so that very negative z gives 0 instead of 0·inf.
    assert z is not None
    e = torch.exp(-z)
    return torch.exp(-e) + z * torch.exp(-z - e)
