"""Shrink & Perturb (Ash & Adams, 2020): θ ← λθ + σε for every parameter of the network.

ε is drawn from the parameter's own initial distribution: a copy of the module that owns it is
re-drawn by its ``reset_parameters`` (``_reset_parameters`` for ``MultiheadAttention``) from a
seed and the module's name, on a forked CPU generator (the caller's RNG is left as it was), and
ε is that copy's value. So for a Linear or a Conv ε is a fresh Kaiming-uniform weight and
uniform bias, and for a LayerNorm or BatchNorm it is that layer's init (weight 1, bias 0): the
norms are pulled toward identity like every other layer is pulled toward a fresh init.

A parameter whose module has no such method has no known init: it is left as it is and named
in ``untreated``. Buffers (BatchNorm's running statistics) and the optimiser's state are not
touched: every weight moved a little, none was replaced.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.treat.units import fresh_layer


def check_shrink_perturb(shrink: float, perturb: float) -> None:
    """λ in [0, 1] (1 keeps the weights), σ >= 0 (0 adds no noise): one-line errors."""
    if not (isinstance(shrink, int | float) and math.isfinite(shrink) and 0 <= shrink <= 1):
        raise NeurodiagError(f"shrink must be a number in [0, 1], got {shrink!r}")
    if not (isinstance(perturb, int | float) and math.isfinite(perturb) and perturb >= 0):
        raise NeurodiagError(f"perturb must be a finite number >= 0, got {perturb!r}")


def _resettable(module: nn.Module) -> bool:
    return callable(getattr(module, "reset_parameters", None)) or callable(
        getattr(module, "_reset_parameters", None)
    )


def shrink_perturb(
    model: nn.Module, *, shrink: float, perturb: float, seed: int = 0
) -> tuple[list[str], list[tuple[str, str]]]:
    """θ ← ``shrink``·θ + ``perturb``·ε in place, module by module (module docstring).

    Returns (the modules whose parameters were treated, (parameter, why) for those left alone).
    ε of module ``name`` comes from ``seed`` and ``name``, so a treatment is reproducible.
    """
    check_shrink_perturb(shrink, perturb)
    treated: list[str] = []
    untreated: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        if not _resettable(module):
            prefix = f"{name}." if name else ""
            untreated.extend(
                (f"{prefix}{p}", f"{type(module).__name__} has no reset_parameters: no known init")
                for p in own
            )
            continue
        fresh = fresh_layer(module, zlib.crc32(f"{seed}:{name}".encode())) if perturb else None
        with torch.no_grad():
            for pname, param in own.items():
                param.mul_(shrink)
                if fresh is not None:
                    param.add_(getattr(fresh, pname).to(param), alpha=perturb)
        treated.append(name)
    return treated, untreated
