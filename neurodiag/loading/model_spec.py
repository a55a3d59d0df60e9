"""Turning a model spec string into an ``nn.Module``.

Accepted specs:

- ``path/file.py``: the file is executed as Python and the model is found by convention, first
  match wins:
  1. a ``build_model()`` function, else a ``get_model()`` function (called with no arguments);
  2. a module-level ``model`` object that is an ``nn.Module``;
  3. the ONE ``nn.Module`` subclass defined in the file whose constructor needs no arguments
     (several -> an error listing them; name one with ``file.py:Name``).
- ``path/file.py:name``: ``name`` in that file: a factory (called with no arguments), an
  ``nn.Module`` subclass (instantiated with no arguments) or an ``nn.Module`` object.
- ``package.module:attr``: imported with importlib, then ``attr`` (dotted attributes allowed)
  is treated like ``name`` above, e.g. ``torch.nn:Tanh``.

The model file runs with its own directory on ``sys.path`` (sibling imports work) under a unique
module name; its globals are kept in ``LoadedModel.namespace`` so the scan can find optional
hooks such as ``make_data()`` and ``loss_fn``. ``weights`` are loaded strictly on the CPU, then
the model is moved to ``device``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.loading.pyfile import (
    USER_MODULE_PREFIX,
    call_user,
    defined_names,
    describe_exception,
    exec_python_file,
    list_names,
    on_sys_path,
    required_params,
    split_file_spec,
)
from neurodiag.loading.weights import load_weights

_FACTORY_NAMES = ("build_model", "get_model")
_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
FORMS = "path/file.py, path/file.py:name or package.module:attr"


@dataclass
class LoadedModel:
    """A model plus where it came from and the namespace its optional hooks live in."""

    model: nn.Module
    name: str
    namespace: dict[str, Any] = field(default_factory=dict)

    def hook(self, name: str) -> Callable[..., Any] | None:
        """The model file's global ``name`` if it is callable (``make_data``, ``loss_fn``)."""
        value = self.namespace.get(name)
        return value if callable(value) else None


def load_model(
    spec: str, *, weights: str | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Build the model named by ``spec`` (see the module docstring), load weights, move it."""
    spec = spec.strip()
    file_spec = split_file_spec(spec)
    if file_spec is not None:
        path_text, name = file_spec
        loaded = _from_file(path_text, name or None)
    elif ":" in spec:
        loaded = _from_package(spec)
    elif Path(spec).suffix or "/" in spec or "\\" in spec or Path(spec).exists():
        raise NeurodiagError(
            f"model spec '{spec}' is not a .py file; pass the Python file that builds the model "
            "(file.py or file.py:factory) and give a checkpoint with --weights"
        )
    else:
        raise NeurodiagError(f"unknown model spec '{spec}'; use {FORMS}")
    if weights is not None:
        load_weights(loaded.model, weights)
    loaded.model = _to_device(loaded.model, device)
    return loaded


def _from_file(path_text: str, name: str | None) -> LoadedModel:
    module = exec_python_file(path_text, what="model file")
    where = f"'{path_text}'"
    with on_sys_path(Path(path_text).expanduser().resolve().parent):
        if name is None:
            name, obj = _by_convention(module, path_text)
        else:
            obj = _lookup(module, name, f"model file {where}")
        model = _instantiate(obj, name, where)
    return LoadedModel(model=model, name=f"{path_text}:{name}", namespace=vars(module))


def _from_package(spec: str) -> LoadedModel:
    module_name, attr = spec.split(":", 1)
    if not _MODULE_PATH.match(module_name) or not _MODULE_PATH.match(attr):
        raise NeurodiagError(f"unknown model spec '{spec}'; use {FORMS}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise NeurodiagError(
            f"cannot import module '{module_name}' ({describe_exception(exc)}); "
            "install the package or check the name"
        ) from exc
    where = f"module '{module_name}'"
    obj = _lookup(module, attr, where)
    return LoadedModel(model=_instantiate(obj, attr, where), name=spec, namespace={})


def _lookup(module: ModuleType, dotted: str, where: str) -> Any:
    obj: Any = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise NeurodiagError(f"{where} has no attribute '{dotted}'; {_suggest(module, part)}")
        obj = getattr(obj, part)
    return obj


def _suggest(module: ModuleType, wrong: str) -> str:
    """All candidates when few (a user's file), else close matches (an installed package)."""
    names = _candidates(module)
    if len(names) <= 12:
        return f"available: {list_names(names)}"
    close = difflib.get_close_matches(wrong, names, n=5)
    hint = f"did you mean {', '.join(close)}?" if close else "check the name"
    return f"{hint} ({len(names)} names available)"


def _candidates(module: ModuleType) -> list[str]:
    """Names that could be a model: defined in a user's file, or public in a package."""

    def keep(value: Any) -> bool:
        return isinstance(value, nn.Module) or inspect.isclass(value) or inspect.isfunction(value)

    if module.__name__.startswith(USER_MODULE_PREFIX):
        return defined_names(module, keep)
    # dir() only: touching attributes of a lazy package (transformers) would import it all.
    return [n for n in dir(module) if not n.startswith("_")]


def _by_convention(module: ModuleType, path_text: str) -> tuple[str, Any]:
    namespace = vars(module)
    for name in _FACTORY_NAMES:
        if callable(namespace.get(name)):
            return name, namespace[name]
    if isinstance(namespace.get("model"), nn.Module):
        return "model", namespace["model"]
    classes = [
        name
        for name, value in namespace.items()
        if inspect.isclass(value)
        and issubclass(value, nn.Module)
        and value.__module__ == module.__name__
    ]
    ready = [name for name in classes if not required_params(namespace[name])]
    if len(ready) == 1:
        return ready[0], namespace[ready[0]]
    if len(ready) > 1:
        raise NeurodiagError(
            f"model file '{path_text}' defines several nn.Module classes ({', '.join(ready)}); "
            f"name one, e.g. '{path_text}:{ready[0]}'"
        )
    needing = f" (classes needing arguments: {', '.join(classes)})" if classes else ""
    raise NeurodiagError(
        f"model file '{path_text}' defines no model{needing}; add build_model() or get_model(), "
        "a module-level 'model', or one nn.Module class without constructor arguments, "
        f"or name it as '{path_text}:name'"
    )


def _instantiate(obj: Any, name: str, where: str) -> nn.Module:
    """An nn.Module from an object, an nn.Module class or a factory function."""
    if isinstance(obj, nn.Module):
        return obj
    if inspect.isclass(obj) and not issubclass(obj, nn.Module):
        raise NeurodiagError(
            f"{name} in {where} is a class but not an nn.Module subclass; name the model"
        )
    if inspect.ismodule(obj) or not callable(obj):
        raise NeurodiagError(
            f"{name} in {where} is a {type(obj).__name__}, not an nn.Module, an nn.Module class "
            "or a factory function; name the model"
        )
    result = call_user(obj, label=f"{name}() in {where}")
    if not isinstance(result, nn.Module):
        raise NeurodiagError(
            f"{name}() in {where} returned a {type(result).__name__}, not an nn.Module; "
            "return the model"
        )
    return result


def _to_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    try:
        return model.to(torch.device(device))
    except Exception as exc:
        raise NeurodiagError(
            f"cannot use device '{device}' ({describe_exception(exc)}); use cpu, or a "
            "device this machine has (e.g. cuda:0)"
        ) from exc
