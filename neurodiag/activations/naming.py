"""One name per activation function, whatever class or call computes it (issue 12).

``gelu`` is ``nn.GELU``, ``F.gelu``, Hugging Face's ``GELUActivation``; ``gelu_tanh`` is
``nn.GELU(approximate="tanh")`` and ``NewGELUActivation``. The report's ``activation`` column
holds this canonical name; ``class`` holds what computed it (the module class, or ``F.gelu``,
``torch.sigmoid``, ``Tensor.relu_`` for calls).

Activation modules the registry does not know are named by what they compute: at a site's first
call their output is compared with each function of ``REFERENCE_FUNCTIONS``, in order, on a
sample of the pre-activations; the first one that reproduces it within the dtype's tolerance names
the site (relu before relu6: on data below 6 they are the same function), otherwise the class
name does. The sample must hold both signs (beyond ±0.1, 16 values each), or the many functions
that agree on one side (relu, elu, leaky_relu for z > 0) could not be told apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: Canonical name -> the function, at its default parameters.
REFERENCE_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "quick_gelu": lambda z: z * torch.sigmoid(1.702 * z),
    "silu": F.silu,
    "mish": F.mish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "hardtanh": F.hardtanh,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "selu": F.selu,
    "celu": F.celu,
    "softplus": F.softplus,
    "relu_squared": lambda z: F.relu(z).square(),
    "logsigmoid": F.logsigmoid,
    "softsign": F.softsign,
    "tanhshrink": F.tanhshrink,
}

SAMPLE_SIZE = 4096
_MIN_PER_SIGN = 16
_SIGN_MARGIN = 0.1


def _tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) a match must meet: a few ulps of the activation's dtype."""
    if dtype in (torch.float16, torch.bfloat16):
        return 1e-2, 1e-3
    if dtype == torch.float64:
        return 1e-10, 1e-12
    return 1e-5, 1e-6


def identify(z: Tensor | None, a: Tensor) -> str | None:
    """The canonical name of the function that maps ``z`` to ``a``, if one does (see above)."""
    if z is None or z.shape != a.shape or not z.is_floating_point():
        return None
    with torch.no_grad():
        zs = z.detach().reshape(-1)[:SAMPLE_SIZE]
        as_ = a.detach().reshape(-1)[:SAMPLE_SIZE]
        finite = torch.isfinite(zs) & torch.isfinite(as_)
        zs, as_ = zs[finite], as_[finite]
        # one host read per unknown module, once per scan
        if (
            int((zs < -_SIGN_MARGIN).sum()) < _MIN_PER_SIGN
            or int((zs > _SIGN_MARGIN).sum()) < _MIN_PER_SIGN
        ):
            return None
        rtol, atol = _tolerance(a.dtype)
        allowed = atol + rtol * as_.abs()
        for name, fn in REFERENCE_FUNCTIONS.items():
            if bool(((fn(zs) - as_).abs() <= allowed).all()):
                return name
    return None


def function_label(func: Any) -> str:
    """How a call reads in the ``class`` column: ``F.gelu``, ``torch.sigmoid``, ``Tensor.relu_``."""
    name = getattr(func, "__name__", None) or str(func)
    if getattr(F, name, None) is func:
        return f"F.{name}"
    if getattr(torch, name, None) is func:
        return f"torch.{name}"
    if getattr(torch.Tensor, name, None) is func:
        return f"Tensor.{name}"
    return name


__all__ = ["REFERENCE_FUNCTIONS", "function_label", "identify"]
