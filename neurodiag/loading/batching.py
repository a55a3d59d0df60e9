"""Batches from in-memory arrays, and user iterables wrapped to behave the same way.

Rules shared by every source:
- dtypes: floating and bool arrays become float32, integer arrays int64 (inputs of a float32
  model; class ids and token ids as ``nn.CrossEntropyLoss``/``nn.Embedding`` expect). Tensors that
  user Python code returns are passed through unchanged: the user chose them.
- batching keeps the last partial batch, ``num_batches`` caps, ``shuffle`` draws one permutation
  from a ``torch.Generator`` seeded with ``seed`` (the global RNG is never touched), so every
  pass over the batches sees the same data in the same order.
- an empty source is an error, raised as soon as it is known.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from neurodiag.errors import NeurodiagError
from neurodiag.loading.datasource import DataOptions, DataSource

Arrays = Tensor | tuple[Tensor, ...] | dict[str, Tensor]

ACCEPTED_RESULTS = (
    "return a DataLoader, an iterable of batches, a Dataset, a tensor or a tuple (x, y) of tensors"
)


def to_tensor(value: Any, *, label: str) -> Tensor:
    """Tensor with the documented dtype rule (floating/bool -> float32, integer -> int64)."""
    if isinstance(value, np.ndarray):
        try:
            value = torch.from_numpy(np.ascontiguousarray(value))
        except TypeError as exc:
            raise NeurodiagError(
                f"{label} holds a numpy array of dtype {value.dtype}; store numbers only"
            ) from exc
    if not isinstance(value, Tensor):
        raise NeurodiagError(f"{label} holds a {type(value).__name__}, expected a tensor/array")
    if value.is_floating_point() or value.dtype == torch.bool:
        return value.to(torch.float32)
    if not value.is_complex():
        return value.to(torch.int64)
    return value


class TensorBatches:
    """Re-iterable mini-batches over tensors sharing dim 0 (see the module docstring)."""

    def __init__(self, data: Arrays, options: DataOptions, *, label: str) -> None:
        if isinstance(data, Tensor):
            self._keys: tuple[str, ...] | None = None
            self._data: tuple[Tensor, ...] = (data,)
        elif isinstance(data, dict):
            self._keys = tuple(data)
            self._data = tuple(data.values())
        else:
            self._keys = None
            self._data = data
        self._single = isinstance(data, Tensor) or len(self._data) == 1
        self._options = options
        self.total = _common_length(self._data, self._keys, label)
        if self.total == 0:
            raise NeurodiagError(f"{label} is empty (0 samples); check the data")

    def __len__(self) -> int:
        batches = math.ceil(self.total / self._options.batch_size)
        cap = self._options.num_batches
        return batches if cap is None else min(batches, cap)

    @property
    def num_samples(self) -> int:
        """Samples one pass yields (after the ``num_batches`` cap)."""
        return min(self.total, len(self) * self._options.batch_size)

    def __iter__(self) -> Iterator[Any]:
        size = self._options.batch_size
        order = None
        if self._options.shuffle:
            generator = torch.Generator().manual_seed(self._options.seed)
            order = torch.randperm(self.total, generator=generator)
        for i in range(len(self)):
            rows = slice(i * size, (i + 1) * size)
            # clone(): a model that edits its input in place must not corrupt the dataset.
            picked = [t[order[rows]] if order is not None else t[rows].clone() for t in self._data]
            if self._keys is not None:
                yield dict(zip(self._keys, picked, strict=True))
            elif self._single:
                yield picked[0]
            else:
                yield tuple(picked)


def _common_length(tensors: tuple[Tensor, ...], keys: tuple[str, ...] | None, label: str) -> int:
    names = keys or tuple(("x", "y")[i] if i < 2 else f"array {i}" for i in range(len(tensors)))
    if not tensors:
        raise NeurodiagError(f"{label} holds no arrays; check the data")
    lengths = []
    for name, tensor in zip(names, tensors, strict=True):
        if tensor.dim() == 0:
            raise NeurodiagError(f"{label}: {name} is a scalar; it needs a sample dimension")
        lengths.append(int(tensor.shape[0]))
    if len(set(lengths)) > 1:
        sizes = ", ".join(f"{n} has {k}" for n, k in zip(names, lengths, strict=True))
        raise NeurodiagError(f"{label}: arrays differ in length ({sizes}); they must match")
    return lengths[0]


class IterableBatches:
    """A user iterable of batches, capped, numpy converted, failing loudly when empty."""

    def __init__(
        self,
        make_iterable: Callable[[], Iterable[Any]],
        *,
        cap: int | None,
        label: str,
        length: int | None = None,
    ) -> None:
        self._make = make_iterable
        self._cap = cap
        self._label = label
        self._length = length

    def __len__(self) -> int:
        """Batches per pass; a TypeError when unknown, as for any unsized iterable."""
        if self._length is None:
            raise TypeError(f"{self._label} has no known length")
        return self._length if self._cap is None else min(self._length, self._cap)

    def __iter__(self) -> Iterator[Any]:
        count = 0
        for batch in itertools.islice(self._make(), self._cap):
            count += 1
            yield _numpy_to_tensors(batch)
        if count == 0:
            raise NeurodiagError(f"{self._label} yielded no batches; check that it has data")


def _numpy_to_tensors(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return to_tensor(obj, label="a batch")
    if isinstance(obj, Mapping):
        return {k: _numpy_to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_numpy_to_tensors(v) for v in obj)
    return obj


def _is_array(value: Any) -> bool:
    return isinstance(value, (Tensor, np.ndarray))


def from_arrays(data: Any, options: DataOptions, *, label: str) -> DataSource | None:
    """Batch a tensor/array, a tuple of them or a dict of them; None for anything else."""
    arrays: Arrays
    if _is_array(data):
        arrays = to_tensor(data, label=label) if isinstance(data, np.ndarray) else data
    elif isinstance(data, tuple) and data and all(_is_array(v) for v in data):
        arrays = tuple(to_tensor(v, label=label) if isinstance(v, np.ndarray) else v for v in data)
    elif isinstance(data, Mapping) and data and all(_is_array(v) for v in data.values()):
        arrays = {
            str(k): to_tensor(v, label=label) if isinstance(v, np.ndarray) else v
            for k, v in data.items()
        }
    else:
        return None
    batches = TensorBatches(arrays, options, label=label)
    description = f"{label} ({batches.total} samples, {options.batching_note()})"
    return DataSource(batches, description, batches.num_samples)


def from_user_object(
    obj: Any, options: DataOptions, *, label: str, recall: Callable[[], Any]
) -> DataSource:
    """Batches from what ``make_data()`` or a loader function returned.

    A tuple is arrays ``(x, y)`` to batch; a list is already a list of batches. A one-shot
    iterator (a generator) is consumed on the first pass and ``recall`` (calling the user
    function again) supplies later passes.
    """
    arrays = from_arrays(obj, options, label=label)
    if arrays is not None:
        return arrays
    if isinstance(obj, Dataset) and not isinstance(obj, IterableDataset):
        generator = torch.Generator().manual_seed(options.seed)
        obj = DataLoader(
            obj, batch_size=options.batch_size, shuffle=options.shuffle, generator=generator
        )
    elif isinstance(obj, IterableDataset):
        obj = DataLoader(obj, batch_size=options.batch_size)
    if isinstance(obj, Iterator):
        return _from_iterator(obj, options, label=label, recall=recall)
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, Mapping)):
        if isinstance(obj, Sized) and len(obj) == 0:
            raise NeurodiagError(f"{label} returned an empty {type(obj).__name__}; add data")
        source_obj = obj
        length = len(obj) if isinstance(obj, Sized) else None
        batches = IterableBatches(
            lambda: source_obj, cap=options.num_batches, label=label, length=length
        )
        samples = _loader_samples(obj, options.num_batches)
        facts = [type(obj).__name__] + ([f"{samples} samples"] if samples is not None else [])
        facts += _cap_note(options)
        return DataSource(batches, f"{label} ({', '.join(facts)})", samples)
    raise NeurodiagError(f"{label} returned a {type(obj).__name__}; {ACCEPTED_RESULTS}")


def _from_iterator(
    first: Iterator[Any], options: DataOptions, *, label: str, recall: Callable[[], Any]
) -> DataSource:
    pending = [first]

    def fresh() -> Iterable[Any]:
        if pending:
            return pending.pop()
        again = recall()
        if not isinstance(again, Iterable):
            raise NeurodiagError(f"{label} returned a {type(again).__name__}; {ACCEPTED_RESULTS}")
        return again

    batches = IterableBatches(fresh, cap=options.num_batches, label=label)
    facts = ", ".join([type(first).__name__, *_cap_note(options)])
    return DataSource(batches, f"{label} ({facts})", None)


def _cap_note(options: DataOptions) -> list[str]:
    return [] if options.num_batches is None else [f"first {options.num_batches} batches"]


def _loader_samples(obj: Any, cap: int | None) -> int | None:
    """Samples a DataLoader over a sized dataset yields per pass; None when unknowable."""
    if not isinstance(obj, DataLoader) or obj.batch_size is None:
        return None
    dataset = obj.dataset
    if not isinstance(dataset, Sized) or isinstance(dataset, IterableDataset):
        return None
    total = len(dataset)
    if obj.drop_last:
        total -= total % obj.batch_size
    return total if cap is None else min(total, cap * obj.batch_size)
