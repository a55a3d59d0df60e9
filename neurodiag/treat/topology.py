"""Who feeds and who reads each activation module, from the module calls of a real forward.

Read by tensor identity between leaf module calls (one forward of an example batch, or one
training step of any style under ``TopologyTrace``), never guessed from names or registration
order; the one naming rule is Hugging Face's gated MLP (``gate_proj``/``up_proj``/``down_proj``
around ``act_fn``), whose product of two branches no module call shows.

A normalisation layer between the producer and the activation (BatchNorm, LayerNorm, RMSNorm,
GroupNorm) is part of the link when its entries are one per unit (its per-channel axis is the
producer's feature axis), so a treatment can reset them; otherwise the site is left untreated.
An activation whose output is the model's output (an output head) is never treated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.batch import map_tensors, split_batch
from neurodiag.errors import NeurodiagError
from neurodiag.model_state import model_device, preserved

_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
#: Normalisation layers a treatment looks through (RMSNorm exists from torch 2.4 on).
_CHANNEL_NORMS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
_SHAPE_NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm,) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)
_NORMS = _CHANNEL_NORMS + _SHAPE_NORMS
#: Modules that keep each channel (or feature) where it is, so the reader behind them still
#: reads the recycled units' own columns: dropout, identity, per-channel pooling.
_PASS_THROUGH = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
)  # fmt: skip


@dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: tuple[int, ...]
    output: int | None
    shape: tuple[int, ...] = ()


def feature_dim(layer: nn.Module, ndim: int) -> int:
    """The unit axis of a ``ndim``-dimensional tensor that ``layer`` (a Linear or ConvNd) reads
    or writes: the last for a Linear, the channel axis (batched or not) for a convolution."""
    spatial = next((n for cls, n in _CONVS.items() if isinstance(layer, cls)), None)
    return ndim - 1 if spatial is None else max(0, ndim - spatial - 1)


class TopologyTrace:
    """Records every leaf module call of whatever runs inside ``with`` (one forward, or one
    training step of any style), in order, with the ids of its tensors; ``links()`` after it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: list[_Call] = []
        #: ids of the tensors the model returned (an activation writing one is an output head)
        self.outputs: set[int] = set()
        self._keep: list[Tensor] = []  # ids stay unique while the tensors live
        self._handles: list[Any] = []

    def __enter__(self) -> TopologyTrace:
        names = {module: name for name, module in self.model.named_modules()}

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            tensors = [a for a in args if isinstance(a, Tensor)]
            out = output if isinstance(output, Tensor) else None
            self._keep.extend([*tensors, *([out] if out is not None else [])])
            ident = None if out is None else id(out)
            shape = () if out is None else tuple(out.shape)
            self.calls.append(_Call(names[module], module, tuple(map(id, tensors)), ident, shape))

        def returned(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            def keep(tensor: Tensor) -> Tensor:
                self._keep.append(tensor)
                self.outputs.add(id(tensor))
                return tensor

            map_tensors(output, keep)

        leaves = [m for m in self.model.modules() if not list(m.children())]
        self._handles = [m.register_forward_hook(hook) for m in leaves]
        self._handles.append(self.model.register_forward_hook(returned))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def links(self) -> Topology:
        links = _links(self.model, self.calls, self.outputs)
        self._keep = []
        return links


def _trace(model: nn.Module, batch: Any) -> TopologyTrace:
    """The calls of one no-grad eval forward of ``batch`` (modes and buffers restored)."""
    try:
        split = split_batch(batch)
    except (TypeError, ValueError) as exc:
        raise NeurodiagError(f"bad example batch: {exc}") from exc
    device = model_device(model)
    move = lambda t: t.to(device)  # noqa: E731
    with TopologyTrace(model) as trace, torch.no_grad(), preserved(model):
        model.eval()
        model(*map_tensors(split.args, move), **map_tensors(split.kwargs, move))
    return trace


def _per_unit(producer: _Call, norm: _Call) -> bool:
    """Whether ``norm`` keeps one entry per unit of ``producer``: its channel axis (BatchNorm,
    GroupNorm) or its normalised shape (LayerNorm, RMSNorm) starts at the unit axis."""
    layer, module = producer.module, norm.module
    width = getattr(layer, "out_features", getattr(layer, "out_channels", None))
    shape = producer.shape
    axis = feature_dim(layer, len(shape))
    if isinstance(module, _CHANNEL_NORMS):
        channels = getattr(module, "num_features", getattr(module, "num_channels", None))
        return axis == 1 and channels == width
    normalized = tuple(getattr(module, "normalized_shape", ()))
    return bool(shape) and normalized == shape[axis:] and shape[axis] == width


def _producer(calls: list[_Call], index: int) -> tuple[_Call | None, _Call | None, str]:
    """(layer, norm in between or None, reason if none) feeding the call at ``index``."""
    wanted = calls[index].inputs[:1]
    norm = None
    for call in reversed(calls[:index]):
        if call.output is None or call.output not in wanted:
            continue
        if isinstance(call.module, _NORMS) and norm is None:
            norm, wanted = call, call.inputs[:1]
            continue
        if isinstance(call.module, _PRODUCERS) and getattr(call.module, "groups", 1) == 1:
            if norm is not None and not _per_unit(call, norm):
                kind = type(norm.module).__name__
                return None, None, f"its {kind} {norm.name!r} does not keep one entry per unit"
            return call, norm, ""
        return None, None, f"fed by {type(call.module).__name__} {call.name!r}"
    return None, None, "no Linear/Conv feeding it was seen"


def _consumer(
    calls: list[_Call], index: int, outputs: set[int] | frozenset[int] = frozenset()
) -> tuple[_Call | None, str]:
    """The one Linear/Conv reading the output of the call at ``index`` (through Dropout)."""
    wanted = calls[index].output
    start = index
    while True:
        if wanted in outputs:
            return None, "an output head (its outputs are the model's): never reset"
        readers = [
            (i, c)
            for i, c in enumerate(calls)
            if i > start
            and wanted in c.inputs
            and not (isinstance(c.module, _PASS_THROUGH) and c.output == wanted)  # eval dropout
        ]
        if len(readers) != 1:
            what = "no module" if not readers else f"{len(readers)} modules"
            return None, f"its output is read by {what} (an add, a concatenation?)"
        i, reader = readers[0]
        if isinstance(reader.module, _PASS_THROUGH):
            wanted, start = reader.output, i
            continue
        if isinstance(reader.module, _PRODUCERS) and getattr(reader.module, "groups", 1) == 1:
            return reader, ""
        return None, f"read by {type(reader.module).__name__} {reader.name!r}"


def _gated(model: nn.Module, name: str) -> tuple[list[nn.Linear], nn.Linear] | None:
    """(gate_proj and up_proj, down_proj) when ``name`` is the act_fn of a gated MLP."""
    parent_name, _, leaf = name.rpartition(".")
    if leaf != "act_fn":
        return None
    parent = model.get_submodule(parent_name) if parent_name else model
    gate, up, down = (getattr(parent, a, None) for a in ("gate_proj", "up_proj", "down_proj"))
    if isinstance(gate, nn.Linear) and isinstance(up, nn.Linear) and isinstance(down, nn.Linear):
        return [gate, up], down
    return None


@dataclass(frozen=True)
class Link:
    """Who feeds and who reads one activation module: names in the model."""

    producers: tuple[str, ...]  # the Linear/Conv (two for a gated MLP) whose rows are redrawn
    norm: str | None  # a per-unit norm (BatchNorm, LayerNorm, ...) between producer and activation
    consumer: str  # the Linear/Conv whose columns are zeroed


#: activation module name -> its Link, or why it cannot be treated
Topology = dict[str, "Link | str"]


def topology(model: nn.Module, example: Any) -> Topology:
    """The Link of every activation-like leaf module, from one forward of ``example`` (no
    grad, the model's modes and buffers restored). Computed once, it serves every later
    ``recycle`` of the same model (``Recycler`` does that during training)."""
    trace = _trace(model, example)
    return _links(model, trace.calls, trace.outputs)


def _links(
    model: nn.Module, calls: list[_Call], outputs: set[int] | frozenset[int] = frozenset()
) -> Topology:
    index_of: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        index_of.setdefault(call.name, []).append(i)
    links: Topology = {}
    for name, indices in index_of.items():
        if len(indices) != 1:
            links[name] = f"the module ran {len(indices)} times in one forward"
            continue
        gated = _gated(model, name)
        if gated is not None:
            parent = name.rpartition(".")[0]
            prefix = f"{parent}." if parent else ""
            links[name] = Link(
                (f"{prefix}gate_proj", f"{prefix}up_proj"), None, f"{prefix}down_proj"
            )
            continue
        producer, norm, why = _producer(calls, indices[0])
        if producer is None:
            links[name] = why
            continue
        consumer, why = _consumer(calls, indices[0], outputs)
        links[name] = (
            why
            if consumer is None
            else Link((producer.name,), None if norm is None else norm.name, consumer.name)
        )
    return links
