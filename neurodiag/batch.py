"""How a batch from a data source is fed to a model.

A batch is one of:
- a tensor ``x``                      -> ``model(x)``, no targets
- a tuple/list ``(x, y)``             -> ``model(x)``, targets ``y``
- a tuple/list ``(x1, ..., xk, y)``   -> ``model(x1, ..., xk)``, targets ``y``
- a tuple/list ``(x,)``               -> ``model(x)``, no targets
- a dict (Hugging Face style)         -> ``model(**batch)``, targets ``batch["labels"]`` if present
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SplitBatch:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    targets: torch.Tensor | None

    def call(self, model: Callable[..., Any]) -> Any:
        return model(*self.args, **self.kwargs)


def split_batch(batch: Any) -> SplitBatch:
    """Split a batch into model arguments and targets (see the module docstring)."""
    if isinstance(batch, torch.Tensor):
        return SplitBatch((batch,), {}, None)
    if isinstance(batch, Mapping):
        labels = batch.get("labels")
        return SplitBatch((), dict(batch), labels if isinstance(labels, torch.Tensor) else None)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError("empty batch")
        if len(batch) == 1:
            return SplitBatch((batch[0],), {}, None)
        return SplitBatch(tuple(batch[:-1]), {}, batch[-1])
    raise TypeError(
        f"a batch must be a tensor, a tuple (x, y) or a dict, got {type(batch).__name__}"
    )


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor in a nested tuple/list/dict structure."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(map_tensors(v, fn) for v in obj)
    if isinstance(obj, list):
        return [map_tensors(v, fn) for v in obj]
    return obj


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: dim 0 of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    if isinstance(batch, Mapping):
        values = list(batch.values())
    elif isinstance(batch, (tuple, list)):
        values = list(batch)
    else:
        return 0
    for value in values:
        size = batch_size_of(value)
        if size:
            return size
    return 0
