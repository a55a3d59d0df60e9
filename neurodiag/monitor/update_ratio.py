"""Update-to-weight ratio per layer and window: ``‖W_end − W_start‖ / ‖W_start‖``.

Every module with a ``weight`` parameter (Linear, Conv*, norms, embeddings, ...) is a layer,
named as the Monitor names sites (DDP's ``module.`` and torch.compile's ``_orig_mod.`` left
out). Only the ``weight`` counts, not the bias (as Composer's per-layer OptimizerMonitor); the
norms are Frobenius norms. A parameter shared by several modules (tied embeddings) is one layer,
under the first module's name.

``snapshot()`` at a window's start copies every trainable weight (``requires_grad``) into a
buffer of its own, on the weight's device, with ``copy_`` into the same buffer from the second
window on: no host sync, no allocation, and the user's parameters, gradients and optimiser are
never touched. That costs one copy of the trainable weights (``Monitor(update_ratio=True)`` opts
in). ``ratios()`` at the window's close reduces each layer to two squared norms on its device and
reads them with one ``.cpu()`` per device (the buffers are scratch after that, until the next
``snapshot()`` refreshes them). A weight frozen (``requires_grad=False``) at the window's start is
not copied and reads 0.0; it is never alerted.

DTensor weights (FSDP2 ``fully_shard``): the norms are taken on the local shards and the squared
norms of sharded weights are summed across ranks (one all-reduce), which every rank must then
reach, as with any collective. Untested: neurodiag's tests cover plain and DDP-style weights only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from neurodiag.monitor.alerts import Alert
from neurodiag.sites.site import ROOT_NAME
from neurodiag.sites.tracer import strip_wrapper

#: SageMaker Debugger's default bounds: a ratio outside them in a window raises an alert.
DEFAULT_BOUNDS: tuple[float, float] = (1e-8, 10.0)


@dataclass
class _Layer:
    name: str
    weight: Tensor
    snapshot: Tensor | None  # None: frozen at the window's start


class UpdateRatios:
    """The weights at a window's start and, at its close, each layer's update ratio."""

    def __init__(self, model: nn.Module, bounds: tuple[float, float] | None = DEFAULT_BOUNDS):
        if bounds is not None and not bounds[0] <= bounds[1]:
            raise ValueError(f"update_ratio_bounds must be (low, high), got {bounds!r}")
        self.model = model
        self.bounds = bounds
        self._layers: list[_Layer] = []
        self._armed = False  # a snapshot of the current window was taken
        self._alerted: set[str] = set()  # layers out of bounds in the last window

    @property
    def snapshots(self) -> list[Tensor]:
        """The snapshot buffers held now (one per trainable layer)."""
        return [layer.snapshot for layer in self._layers if layer.snapshot is not None]

    def snapshot(self) -> None:
        """Copy every trainable weight (the window's start); reuses last window's buffers."""
        held = {layer.name: layer.snapshot for layer in self._layers}
        layers = []
        with torch.no_grad():
            for name, weight in _weights(self.model):
                copy = None
                if weight.requires_grad:
                    local = _local(weight.detach())
                    copy = held.get(name)
                    if copy is None or not _same_layout(copy, local):
                        copy = torch.empty_like(local)
                    copy.copy_(local)
                layers.append(_Layer(name, weight, copy))
        self._layers = layers
        self._armed = True

    def ratios(self) -> tuple[dict[str, float], tuple[str, ...]] | None:
        """Each layer's ratio since ``snapshot()`` and the layers frozen at that time; None when
        no snapshot was taken since the last call. A layer whose weight changed shape or device
        in the window is left out."""
        if not self._armed:
            return None
        self._armed = False
        rows: dict[tuple[torch.device, bool], list[tuple[str, Tensor]]] = {}
        with torch.no_grad():
            for layer in self._layers:
                if layer.snapshot is None:
                    continue
                now = _local(layer.weight.detach())
                if not _same_layout(layer.snapshot, now):
                    continue
                start = _norm(layer.snapshot)
                change = _norm(layer.snapshot.sub_(now))  # the buffer is scratch from here
                key = (now.device, _sharded(layer.weight))
                rows.setdefault(key, []).append(
                    (layer.name, torch.stack([start, change]).float() ** 2)
                )
            squared: dict[str, tuple[float, float]] = {}
            for (_, sharded), named in rows.items():
                stacked = torch.stack([row for _, row in named])
                if sharded and dist.is_available() and dist.is_initialized():
                    dist.all_reduce(stacked)
                values = stacked.cpu().tolist()  # the one host read (per device)
                squared.update(
                    (name, (value[0], value[1]))
                    for (name, _), value in zip(named, values, strict=True)
                )
        ratios: dict[str, float] = {}
        for layer in self._layers:
            if layer.snapshot is None:
                ratios[layer.name] = 0.0
            elif layer.name in squared:
                start_sq, change_sq = squared[layer.name]
                ratios[layer.name] = _ratio(math.sqrt(change_sq), math.sqrt(start_sq))
        frozen = tuple(layer.name for layer in self._layers if layer.snapshot is None)
        return ratios, frozen

    def alerts(
        self,
        ratios: dict[str, float],
        frozen: tuple[str, ...],
        *,
        window: int,
        step: int,
        epoch: int | None,
    ) -> list[Alert]:
        """The trainable layers out of ``bounds`` in this window and not in the last one."""
        if self.bounds is None:
            return []
        low, high = self.bounds
        out = {
            name: ratio
            for name, ratio in ratios.items()
            if name not in frozen and not low <= ratio <= high
        }
        fired = []
        for name, ratio in out.items():
            if name in self._alerted:
                continue
            below = ratio < low
            limit = low if below else high
            where = "below" if below else "above" if ratio > high else "outside"
            fired.append(
                Alert(
                    site=name,
                    metric="update_ratio",
                    value=ratio,
                    threshold=limit,
                    step=step,
                    window=window,
                    epoch=epoch,
                    rule="update_ratio",
                    message=f"update ratio {ratio:.3g} {where} {limit:g} "
                    f"(‖ΔW‖/‖W‖ over the window; bounds [{low:g}, {high:g}])",
                )
            )
        self._alerted = set(out)
        return fired


def _weights(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Every module's own ``weight`` parameter, once per parameter, by the module's name."""
    seen: set[int] = set()
    found = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is None or id(weight) in seen or not weight.is_floating_point():
            continue
        seen.add(id(weight))
        found.append((_layer_name(name), weight))
    return found


def _layer_name(name: str) -> str:
    """The user's name, as the sites get it (``strip_wrapper``); the model itself is ROOT_NAME."""
    return strip_wrapper(name) or ROOT_NAME


def _norm(tensor: Tensor) -> Tensor:
    """Frobenius norm, accumulated in float32 at least (float16/bfloat16 weights)."""
    wide = torch.promote_types(tensor.dtype, torch.float32)
    norm: Tensor = torch.linalg.vector_norm(tensor, dtype=wide)
    return norm


def _local(tensor: Tensor) -> Tensor:
    """A DTensor's local shard; any other tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _sharded(tensor: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor) and any(p.is_shard() for p in tensor.placements)


def _same_layout(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _ratio(change: float, start: float) -> float:
    """``change / start``; 0 for an unchanged all-zero weight, inf for a moved one."""
    if start == 0.0:
        return 0.0 if change == 0.0 else math.inf
    return change / start


__all__ = ["DEFAULT_BOUNDS", "UpdateRatios"]
