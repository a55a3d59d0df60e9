"""Loading a checkpoint into a model, safely (``weights_only=True``) and strictly.

Accepted checkpoint contents: a state_dict, or a dict with a ``state_dict``, ``model`` or
``model_state_dict`` entry holding one (the layouts of common training scripts). Keys saved from
``nn.DataParallel``/DDP (all prefixed ``module.``) are unprefixed when the model's keys are not.
Every key must match (strict): a partial load would silently scan an untrained model.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.loading.pyfile import describe_exception, list_names, one_line, why_not_a_file

_ENTRIES = ("state_dict", "model", "model_state_dict")
_SHOWN = 5
# torch's message when weights_only meets a pickled class; other unpickling errors mean corruption.
_REFUSED_GLOBAL = re.compile(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)
_UNSUPPORTED_OP = re.compile(r"Unsupported operand (\d+)")


def read_checkpoint(path_text: str, *, what: str) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors; ``what`` names the file's role."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise NeurodiagError(f"{what} '{path_text}' {why_not_a_file(path)}")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning would add 2 lines
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        operand = _UNSUPPORTED_OP.search(str(exc))
        if refused is None and operand is not None:
            raise NeurodiagError(
                f"cannot read {what} '{path_text}': not a torch.save file (a plain pickle or "
                f"another format; torch.load weights_only=True stopped at pickle opcode "
                f"{operand.group(1)} and ran nothing); save plain tensors with torch.save"
            ) from exc
        if refused is None:
            raise NeurodiagError(
                f"cannot read {what} '{path_text}' (not a readable torch.save file); "
                "is it a file written by torch.save?"
            ) from exc
        raise NeurodiagError(
            f"{what} '{path_text}' holds pickled Python objects ({refused.group(1)}), refused "
            "for safety (torch.load weights_only=True); save plain tensors instead, e.g. "
            "torch.save(model.state_dict(), path)"
        ) from exc
    except Exception as exc:
        raise NeurodiagError(
            f"cannot read {what} '{path_text}' ({describe_exception(exc)}); "
            "is it a file written by torch.save?"
        ) from exc


def extract_state_dict(obj: Any, path_text: str) -> dict[str, torch.Tensor]:
    """Find the state_dict inside a loaded checkpoint (see the module docstring)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for entry in _ENTRIES:
            if isinstance(obj.get(entry), Mapping):
                return extract_state_dict(obj[entry], path_text)
        keys = list_names([str(k) for k in obj], _SHOWN)
        raise NeurodiagError(
            f"weights file '{path_text}' holds a dict (keys {keys}) that is not a state_dict; "
            "save model.state_dict() or a dict with a 'state_dict' or 'model' entry"
        )
    raise NeurodiagError(
        f"weights file '{path_text}' holds a {type(obj).__name__}, not a state_dict; "
        "save model.state_dict()"
    )


def _strip_parallel_prefix(
    state: dict[str, torch.Tensor], model_keys: set[str]
) -> dict[str, torch.Tensor]:
    prefix = "module."
    if all(k.startswith(prefix) for k in state) and not any(
        k.startswith(prefix) for k in model_keys
    ):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path_text: str) -> None:
    """Load the checkpoint at ``path_text`` into ``model`` (strict; CPU tensors)."""
    state = extract_state_dict(read_checkpoint(path_text, what="weights file"), path_text)
    expected = model.state_dict()
    state = _strip_parallel_prefix(state, set(expected))
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        raise NeurodiagError(
            f"weights file '{path_text}' does not match the model: shape mismatch for "
            f"{list_names(mismatched, 3)}; check that the weights belong to this model"
        )
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise NeurodiagError(
            f"weights file '{path_text}' does not match the model ({one_line(exc)}); "
            "check that the weights belong to this model"
        ) from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys {list_names(list(result.missing_keys), _SHOWN)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {list_names(list(result.unexpected_keys), _SHOWN)}")
    if problems:
        raise NeurodiagError(
            f"weights file '{path_text}' does not match the model: {'; '.join(problems)}; "
            "check that the weights belong to this model"
        )
