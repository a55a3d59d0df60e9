"""Tensor files: ``.pt``/``.pth`` (torch.save), ``.npz`` and ``.npy`` (numpy).

- ``.pt``/``.pth``: read with ``torch.load(weights_only=True)``; holds a tensor ``x``, a tuple or
  list ``(x, y)`` (or ``(x1, ..., xk, y)``), a dict with key ``x`` and optional ``y``, or a dict
  of **named inputs** (no ``x`` key): each key a keyword of the model's forward
  (``{"input_values": ..., "attention_mask": ...}``), batched like Hugging Face batches
  (``model(**batch)``; a ``labels`` entry is also the target).
- ``.npz``: arrays ``x`` and optional ``y``; arrays saved without names (``arr_0``, ``arr_1``:
  ``np.savez(f, x, y)``) are ``x`` and ``y``; any other names are named inputs as above.
- ``.npy``: one array ``x``.
Arrays follow the dtype rule of ``neurodiag.loading.batching`` (float32 / int64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neurodiag.errors import NeurodiagError
from neurodiag.loading.batching import TensorBatches, to_tensor
from neurodiag.loading.datasource import DataOptions, DataSource
from neurodiag.loading.pyfile import describe_exception, list_names, why_not_a_file
from neurodiag.loading.weights import read_checkpoint


def load_torch_file(spec: str, options: DataOptions) -> DataSource:
    """x (and y) from a file written by ``torch.save``."""
    content = read_checkpoint(spec, what="data file")
    return _source(spec, _arrays_from_object(content, spec), options)


def _arrays_from_object(content: Any, spec: str) -> list[Any] | dict[str, Any]:
    if isinstance(content, dict):
        if "x" not in content:
            return _named_inputs(content, spec)
        return [content["x"]] + ([content["y"]] if content.get("y") is not None else [])
    if isinstance(content, (tuple, list)):
        if not content:
            raise NeurodiagError(f"data file '{spec}' holds an empty {type(content).__name__}")
        return list(content)
    return [content]


def load_numpy_file(spec: str, options: DataOptions) -> DataSource:
    """x (and y) from ``.npy``/``.npz``; pickled object arrays are refused."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise NeurodiagError(f"data file '{spec}' {why_not_a_file(path)}")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        else:
            arrays = {"x": np.load(path, allow_pickle=False)}
    except Exception as exc:
        raise NeurodiagError(
            f"cannot read data file '{spec}' ({describe_exception(exc)}); "
            "save numeric arrays with numpy.save/numpy.savez"
        ) from exc
    return _source(spec, _pick_xy(arrays, spec), options)


def _pick_xy(arrays: dict[str, Any], spec: str) -> list[Any] | dict[str, Any]:
    if "x" in arrays:
        return [arrays["x"]] + ([arrays["y"]] if "y" in arrays else [])
    if not arrays:
        raise NeurodiagError(f"data file '{spec}' holds no arrays; save x (and y) in it")
    if all(name.startswith("arr_") for name in arrays):  # np.savez(f, x, y): positional
        return list(arrays.values())[:2]
    return _named_inputs(arrays, spec)


def _named_inputs(content: dict[Any, Any], spec: str) -> dict[str, Any]:
    """A dict of forward keywords -> arrays (see the module docstring)."""
    bad = [str(k) for k in content if not (isinstance(k, str) and k.isidentifier())]
    if "y" in content:  # targets without inputs: not a forward keyword named y
        raise NeurodiagError(
            f"data file '{spec}' holds a dict with keys {list_names([str(k) for k in content])} "
            "but no 'x' (inputs) key; save {'x': inputs, 'y': targets}"
        )
    if bad or not content:
        keys = list_names([str(k) for k in content]) if content else "none"
        raise NeurodiagError(
            f"data file '{spec}' holds a dict with keys {keys}; expected key 'x' (and optionally "
            "'y'), or named inputs whose keys are the forward's keyword names"
        )
    return {str(k): v for k, v in content.items()}


def _source(spec: str, arrays: list[Any] | dict[str, Any], options: DataOptions) -> DataSource:
    label = f"data file '{spec}'"
    if isinstance(arrays, dict):
        named = {key: to_tensor(a, label=f"{label} [{key!r}]") for key, a in arrays.items()}
        batches = TensorBatches(named, options, label=label)
        description = (
            f"{spec} (named inputs {', '.join(named)}; {batches.total} samples, "
            f"{options.batching_note()})"
        )
        return DataSource(batches, description, batches.num_samples)
    tensors = tuple(to_tensor(a, label=label) for a in arrays)
    batches = TensorBatches(tensors if len(tensors) > 1 else tensors[0], options, label=label)
    description = f"{spec} ({batches.total} samples, {options.batching_note()})"
    return DataSource(batches, description, batches.num_samples)
