"""``neurodiag.inspect``: weight-only health of every Linear and Conv layer, with no data.

Finds the layers, matches them with the optimizer's Adam state and with the initial weights,
and applies ``neurodiag.inspect.rows`` to each. Nothing of the model is written: weights,
buffers, ``.grad``, ``requires_grad`` and training modes stay as they were (no forward runs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.inspect.rows import (
    dead_rows,
    duplicate_rows,
    full,
    nu_dead_rows,
    weight_distance,
)
from neurodiag.loading.pyfile import list_names
from neurodiag.sites.tracer import strip_wrapper

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d

COLUMNS = (
    "layer",
    "kind",
    "rows",
    "dead_rows",
    "dead_rows_pct",
    "duplicate_rows",
    "duplicate_rows_pct",
    "nu_dead_rows",
    "nu_dead_rows_pct",
    "weight_distance",
)

_OPTIMIZER_ENTRIES = ("optimizer", "optimizer_state_dict", "optim", "opt")


def clean_name(name: str) -> str:
    """A module or parameter name by the sites' naming rule (``strip_wrapper``), applied until
    nothing changes: checkpoints may nest wrappers (``module.module.``), and wrapped and bare
    models and checkpoints must match."""
    while (stripped := strip_wrapper(name)) != name:
        name = stripped
    return name


def find_layers(model: nn.Module) -> list[tuple[str, Layer]]:
    """(clean name, layer) of every Linear/Conv1d/2d/3d with materialised weights, in order."""
    found: list[tuple[str, Layer]] = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES) and not isinstance(
            module.weight, nn.parameter.UninitializedParameter
        ):
            found.append((clean_name(name) or "(model)", module))
    return found


def kind(layer: nn.Module) -> str:
    """The layer's own class name, not FSDP2's ``FSDP<Name>`` subclass made by fully_shard."""
    cls: type = type(layer)
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule

        if issubclass(cls, FSDPModule):
            cls = next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))
    return cls.__name__


def _param_key(name: str) -> str:
    return clean_name(f"{name}.weight" if name != "(model)" else "weight")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def optimizer_state_dict(obj: Any, where: str = "the optimizer state") -> Mapping[str, Any]:
    """The ``optimizer.state_dict()`` inside ``obj`` (itself, or under an ``optimizer`` /
    ``optimizer_state_dict`` / ``optim`` / ``opt`` entry of a training checkpoint)."""
    if isinstance(obj, Mapping):
        if "state" in obj and "param_groups" in obj:
            return obj
        for entry in _OPTIMIZER_ENTRIES:
            if isinstance(obj.get(entry), Mapping):
                return optimizer_state_dict(obj[entry], where)
        keys = list_names([str(k) for k in obj], 5)
        raise NeurodiagError(
            f"{where} holds a dict (keys {keys}) that is not an optimizer state_dict; save "
            "optimizer.state_dict() (it has 'state' and 'param_groups')"
        )
    raise NeurodiagError(
        f"{where} is a {type(obj).__name__}, not a torch.optim.Optimizer or its state_dict(); "
        "save optimizer.state_dict()"
    )


def _states_by_order(
    ids: list[Any], state: Mapping[Any, Any], named: dict[str, nn.Parameter]
) -> list[nn.Parameter]:
    """The parameters the state's integer ids stand for: the optimizer was built on
    ``model.parameters()`` (or on its trainable ones), so the ids follow that order."""
    everything = list(named.values())
    candidates = [everything, [p for p in everything if p.requires_grad]]
    names = {id(p): n for n, p in named.items()}
    mismatch = ""
    for params in candidates:
        if len(params) != len(ids):
            continue
        for i, param in zip(ids, params):
            nu = state.get(i, {}).get("exp_avg_sq") if isinstance(state.get(i), Mapping) else None
            if isinstance(nu, torch.Tensor) and _shape(nu) != _shape(param):
                mismatch = (
                    f"its parameter {i} has shape {_shape(nu)} where the model's "
                    f"'{clean_name(names[id(param)])}' has {_shape(param)}"
                )
                break
        else:
            return params
    trainable = len(candidates[1])
    why = mismatch or (
        f"it holds {len(ids)} parameter entries, the model {len(everything)} parameters "
        f"({trainable} trainable)"
    )
    raise NeurodiagError(
        f"the optimizer state does not match the model: {why}; pass the state_dict() of the "
        "optimizer that trained this model"
    )


def _states_from_dict(model: nn.Module, saved: Mapping[str, Any]) -> dict[int, Mapping[Any, Any]]:
    state, groups = saved.get("state"), saved.get("param_groups")
    if not (
        isinstance(state, Mapping)
        and isinstance(groups, list | tuple)
        and all(isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups)
    ):
        raise NeurodiagError(
            "the optimizer state has no valid 'state' and 'param_groups'; save "
            "optimizer.state_dict()"
        )
    ids = [i for g in groups for i in g["params"]]
    named = dict(model.named_parameters())
    if groups and all(isinstance(g.get("param_names"), list) for g in groups):
        # built on model.named_parameters(): match by name, whatever the order of the groups
        by_name = {clean_name(n): p for n, p in named.items()}
        names = [str(n) for g in groups for n in g["param_names"]]
        unknown = [n for n in names if clean_name(n) not in by_name]
        if unknown or len(names) != len(ids):
            raise NeurodiagError(
                "the optimizer state does not match the model: it names parameters the model "
                f"does not have ({list_names(unknown, 3)}); pass the state_dict() of the "
                "optimizer that trained this model"
            )
        params = [by_name[clean_name(n)] for n in names]
    else:
        params = _states_by_order(ids, state, named)
    result: dict[int, Mapping[Any, Any]] = {}
    for i, param in zip(ids, params):
        entry = state.get(i)
        entry = entry if isinstance(entry, Mapping) else {}
        nu = entry.get("exp_avg_sq")
        if isinstance(nu, torch.Tensor) and _shape(nu) != _shape(param):
            raise NeurodiagError(
                f"the optimizer state does not match the model: its parameter {i} has shape "
                f"{_shape(nu)}, the model's has {_shape(param)}; pass the state_dict() of the "
                "optimizer that trained this model"
            )
        result[id(param)] = entry
    return result


def second_moments(model: nn.Module, optimizer: Any) -> dict[int, torch.Tensor]:
    """``exp_avg_sq`` of each model parameter that has one, keyed by ``id(parameter)``.

    ``optimizer``: a ``torch.optim.Optimizer`` holding the model's parameters, or its
    ``state_dict()`` (see ``optimizer_state_dict``). An optimizer whose state holds no
    ``exp_avg_sq`` at all (SGD, Adagrad, ...) is refused; one that has not stepped yet gives
    an empty dict (the ν columns stay NaN).
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        owned = {id(p) for p in model.parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if params and not any(id(p) in owned for p in params):
            raise NeurodiagError(
                "the optimizer holds none of the model's parameters; pass the optimizer built "
                "on this model (or its state_dict())"
            )
        states: dict[int, Mapping[Any, Any]] = {
            id(p): optimizer.state.get(p, {}) for p in params if id(p) in owned
        }
    else:
        states = _states_from_dict(model, optimizer_state_dict(optimizer))
    moments = {
        key: entry["exp_avg_sq"]
        for key, entry in states.items()
        if isinstance(entry.get("exp_avg_sq"), torch.Tensor)
    }
    if not moments and any(states.values()):
        kind = type(optimizer).__name__ if isinstance(optimizer, torch.optim.Optimizer) else ""
        raise NeurodiagError(
            f"the optimizer {kind + ' ' if kind else ''}state has no 'exp_avg_sq': ν-dead rows "
            "need an Adam-family optimizer (Adam, AdamW, NAdam, RAdam); leave the optimizer out"
        )
    return moments


def initial_weights(initial: Any) -> dict[str, torch.Tensor]:
    """Clean parameter name -> tensor of a state_dict or a module."""
    if isinstance(initial, nn.Module):
        initial = initial.state_dict()
    if not isinstance(initial, Mapping):
        raise NeurodiagError(
            f"the initial weights are a {type(initial).__name__}, not a state_dict or a module; "
            "pass model.state_dict() saved before training"
        )
    return {clean_name(str(k)): v for k, v in initial.items() if isinstance(v, torch.Tensor)}


def _pct(count: float, rows: int) -> float:
    return 100.0 * count / rows if rows else math.nan


def inspect(model: nn.Module, optimizer: Any = None, initial: Any = None) -> pd.DataFrame:
    """Weight-only health of every Linear and Conv1d/2d/3d layer of ``model``, with no data.

    One row per layer, columns ``COLUMNS``: ``rows`` (output units), ``dead_rows`` (zero
    weight row and bias), ``duplicate_rows`` (rows with a twin of cosine > 0.99),
    ``nu_dead_rows`` (rows Adam's second moment says never got a gradient; NA without an
    ``optimizer`` or state), ``weight_distance`` (‖W − W_init‖ / ‖W_init‖ against ``initial``,
    a state_dict or module; NaN without) and the percentages. Exact definitions and tolerances:
    docs/inspect.md. The model is only read. With DTensor (FSDP2) parameters every rank must
    call this: each weight is gathered whole.
    """
    if not isinstance(model, nn.Module):
        raise NeurodiagError(f"inspect needs an nn.Module, got a {type(model).__name__}")
    found = find_layers(model)
    if not found:
        raise NeurodiagError(
            f"{type(model).__name__} has no Linear or Conv1d/2d/3d layer to inspect "
            "(inspect reads those layers' weights only)"
        )
    moments = None if optimizer is None else second_moments(model, optimizer)
    start = None if initial is None else initial_weights(initial)
    if start is not None and not any(_param_key(name) in start for name, _ in found):
        example = _param_key(found[0][0])
        raise NeurodiagError(
            f"the initial weights hold none of the model's layers (no '{example}'); pass a "
            "state_dict of this model saved before training"
        )
    records = []
    with torch.no_grad():
        for name, layer in found:
            weight = full(layer.weight)
            if weight.is_meta:
                raise NeurodiagError(
                    f"layer {name} has no weights yet (meta device); load real weights first"
                )
            bias = full(layer.bias) if isinstance(layer.bias, torch.Tensor) else None
            rows = int(weight.shape[0])
            dead = int(dead_rows(weight, bias).sum())
            dup = int(duplicate_rows(weight, int(getattr(layer, "groups", 1))).sum())
            nu_dead: int | None = None
            nu = None if moments is None else moments.get(id(layer.weight))
            if nu is not None:
                nu = full(nu)
                if _shape(nu) != _shape(weight):
                    raise NeurodiagError(
                        f"the optimizer state does not match layer {name}: its second moment "
                        f"has shape {_shape(nu)}, the weight {_shape(weight)}"
                    )
                nu_dead = int(nu_dead_rows(nu).sum())
            distance = math.nan
            if start is not None and (w0 := start.get(_param_key(name))) is not None:
                w0 = full(w0)
                if _shape(w0) != _shape(weight):
                    raise NeurodiagError(
                        f"the initial weights do not match layer {name}: shape {_shape(w0)} "
                        f"there, {_shape(weight)} in the model"
                    )
                distance = weight_distance(weight, w0)
            records.append(
                {
                    "layer": name,
                    "kind": kind(layer),
                    "rows": rows,
                    "dead_rows": dead,
                    "dead_rows_pct": _pct(dead, rows),
                    "duplicate_rows": dup,
                    "duplicate_rows_pct": _pct(dup, rows),
                    "nu_dead_rows": nu_dead,
                    "nu_dead_rows_pct": math.nan if nu_dead is None else _pct(nu_dead, rows),
                    "weight_distance": distance,
                }
            )
    frame: pd.DataFrame = pd.DataFrame(records, columns=list(COLUMNS))
    frame["nu_dead_rows"] = frame["nu_dead_rows"].astype("Int64")
    return frame
