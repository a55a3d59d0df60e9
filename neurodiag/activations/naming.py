"""One name per activation function, whatever class or call computes it (issue 12).

``gelu`` is ``nn.GELU``, ``F.gelu``, Hugging Face's ``GELUActivation``; ``gelu_tanh`` is
``nn.GELU(approximate="tanh")`` and ``NewGELUActivation``. The report's ``activation`` column
holds this canonical name; ``class`` holds what computed it (the module class, or ``F.gelu``,
``torch.sigmoid``, ``Tensor.relu_`` for calls).

Activation modules the registry does not know are named by what they compute, never by the data
they happen to see (issue 26: a Hugging Face ``GELUActivation`` fed pre-activations of size 1e-4
kept its class name, as gelu and x/2 agree there): at a site's first call the module is run on a
fixed grid of inputs (``PROBE_GRID``, both signs, beyond ±6, in the site's dtype and device) and
its output is compared with each function of ``REFERENCE_FUNCTIONS``, in order; the first one
that reproduces it within the dtype's tolerance names the site, otherwise the class name does.
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


#: The inputs every unknown activation module is probed on: -8 to 8 in steps of 1/64, so relu and
#: relu6, or gelu and its tanh form, always differ somewhere (the references run on the same,
#: dtype-rounded, grid).
PROBE_POINTS = 1025
PROBE_RANGE = 8.0


def probe_input(like: Tensor) -> Tensor:
    """The fixed probe grid, in ``like``'s dtype and device, in ``like``'s shape when it has room
    (per-channel modules broadcast over it), else flat."""
    grid = torch.linspace(-PROBE_RANGE, PROBE_RANGE, PROBE_POINTS, dtype=torch.float64)
    grid = grid.to(device=like.device, dtype=like.dtype)
    if like.numel() < PROBE_POINTS:
        return grid
    return grid.repeat(-(-like.numel() // PROBE_POINTS))[: like.numel()].reshape(like.shape)


def identify_module(run: Callable[[Tensor], Tensor], like: Tensor) -> str | None:
    """The canonical name of the elementwise function ``run`` computes, probed on the fixed grid
    (``probe_input(like)``); None when no reference function matches or ``run`` refuses it."""
    z = probe_input(like)
    try:
        with torch.no_grad():
            a = run(z.clone())  # a copy: the module may work in place
    except Exception:  # a module that needs its own shapes: no name by probe
        return None
    if not isinstance(a, Tensor) or a.shape != z.shape:
        return None
    return identify(z, a)


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


__all__ = ["REFERENCE_FUNCTIONS", "function_label", "identify", "identify_module", "probe_input"]
