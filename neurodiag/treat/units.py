"""The per-unit surgery every treatment shares: fresh incoming rows drawn from a layer's own
init, zeroed outgoing columns, identity norm entries, and the optimiser moments of what was
touched set to 0 (a stale moment would push a fresh weight where the old one was going).

One place, so ReDo, ReGraMa, continual backprop and Shrink & Perturb draw and reset alike.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

#: Optimiser state entries shaped like their parameter (Adam, AdamW, SGD momentum, RMSprop...).
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg")


def fresh_layer(layer: nn.Module, seed: int) -> nn.Module:
    """A copy of ``layer`` re-drawn by its own ``reset_parameters`` (or ``_reset_parameters``,
    as ``MultiheadAttention`` names it) from ``seed``, without touching the caller's RNG."""
    new = copy.deepcopy(layer).cpu()  # the CPU RNG, forked: no device RNG is touched
    reset = getattr(new, "reset_parameters", None) or getattr(new, "_reset_parameters", None)
    assert callable(reset)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        reset()
    return new


def layer_weight(layer: nn.Module) -> Tensor:
    weight = layer.weight
    assert isinstance(weight, Tensor)
    return weight


def reset_rows(
    layer: nn.Module, rows: Tensor, optimizer: torch.optim.Optimizer | None, seed: int
) -> None:
    """The ``rows`` (units) of ``layer``'s weight and bias as its init draws them (from
    ``seed``), their optimiser moments zeroed."""
    fresh = fresh_layer(layer, seed)
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(layer, name, None)
            if param is not None:
                param[rows] = getattr(fresh, name)[rows.cpu()].to(param)
                reset_moments(optimizer, param, (rows,))


def zero_columns(layer: nn.Module, cols: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """The reader's weights from the ``cols`` units set to 0, their moments too."""
    weight = layer_weight(layer)
    with torch.no_grad():
        weight[:, cols] = 0.0
    reset_moments(optimizer, weight, (slice(None), cols))


def reset_norm(norm: nn.Module, rows: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """A norm layer's entries of the ``rows`` units back to identity (weight 1, bias 0, running
    mean 0, running variance 1)."""
    with torch.no_grad():
        for name, value in (("weight", 1.0), ("bias", 0.0)):
            param = getattr(norm, name, None)
            if param is not None:
                param[rows] = value
                reset_moments(optimizer, param, (rows,))
        for name, value in (("running_mean", 0.0), ("running_var", 1.0)):
            buffer = getattr(norm, name, None)
            if buffer is not None:
                buffer[rows] = value


def reset_moments(optimizer: torch.optim.Optimizer | None, param: Tensor, index: Any) -> None:
    """Zero the ``index`` entries of every moment ``optimizer`` keeps for ``param``."""
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    with torch.no_grad():
        for key in MOMENT_KEYS:
            moment = state.get(key)
            if isinstance(moment, Tensor) and moment.shape == param.shape:
                moment[index] = 0.0
