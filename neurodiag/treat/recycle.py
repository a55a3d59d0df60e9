"""``recycle``: ReDo (Sokar et al., 2023) on a user's model, from a neurodiag report.

For each dead (or τ-dormant) neuron of a site, the incoming weights of the layer producing it
are re-initialised as that layer's own ``reset_parameters`` would draw them, and the outgoing
weights of the layer reading it are zeroed, so the network computes exactly what it computed
before (the recycled units contribute 0) while the units can learn again.

Topology is read from one forward of an example batch, by tensor identity between module
calls, never guessed from names or registration order. Covered:

- ``Linear → act → Linear`` (transformer MLPs ``fc1 → act → fc2`` included), with ``Dropout``,
  ``Identity`` or per-channel pooling (``MaxPool``/``AvgPool``) between the activation and its
  reader;
- ``Conv → [BatchNorm] → act → Conv`` per channel (groups = 1); a BatchNorm in front of the
  activation gets its affine and running statistics reset for the recycled channels;
- gated MLPs (``act_fn(gate_proj(x)) * up_proj(x) → down_proj``, the Hugging Face naming):
  gate and up rows re-initialised, down columns zeroed.

Anything else (an output read by several layers, a concatenation, a flatten into a Linear,
functional sites, a module called more than once per forward) is named in ``untreated`` with
the reason, and left alone.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.errors import NeurodiagError
from neurodiag.report.model import Report
from neurodiag.treat.topology import Link, Topology, topology

#: Optimiser state entries shaped like their parameter (Adam, AdamW, SGD momentum, RMSprop...).
_MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg")


@dataclass(frozen=True)
class TreatedSite:
    site: str
    #: the layers whose rows were re-initialised, and the one whose columns were zeroed
    producers: tuple[str, ...]
    consumer: str
    neurons: tuple[int, ...]
    width: int


@dataclass
class RecycleResult:
    """What ``recycle`` did: the (copied or given) model, the treated sites, the others."""

    model: nn.Module
    treated: list[TreatedSite] = field(default_factory=list)
    untreated: list[tuple[str, str]] = field(default_factory=list)

    @property
    def recycled(self) -> int:
        return sum(len(t.neurons) for t in self.treated)


def _fresh(layer: nn.Module, seed: int) -> nn.Module:
    """A copy of ``layer`` re-drawn by its own ``reset_parameters`` from ``seed``, without
    touching the caller's RNG."""
    new = copy.deepcopy(layer).cpu()  # the CPU RNG, forked: no device RNG is touched
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        new.reset_parameters()  # type: ignore[operator]
    return new


def _weight(layer: nn.Module) -> Tensor:
    weight = layer.weight
    assert isinstance(weight, Tensor)
    return weight


def _reset_rows(
    layer: nn.Module, rows: Tensor, optimizer: torch.optim.Optimizer | None, seed: int
) -> None:
    fresh = _fresh(layer, seed)
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(layer, name, None)
            if param is not None:
                param[rows] = getattr(fresh, name)[rows.cpu()].to(param)
                _reset_moments(optimizer, param, (rows,))


def _zero_columns(layer: nn.Module, cols: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    weight = _weight(layer)
    with torch.no_grad():
        weight[:, cols] = 0.0
    _reset_moments(optimizer, weight, (slice(None), cols))


def _reset_norm(norm: nn.Module, rows: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    with torch.no_grad():
        for name, value in (("weight", 1.0), ("bias", 0.0)):
            param = getattr(norm, name, None)
            if param is not None:
                param[rows] = value
                _reset_moments(optimizer, param, (rows,))
        for name, value in (("running_mean", 0.0), ("running_var", 1.0)):
            buffer = getattr(norm, name, None)
            if buffer is not None:
                buffer[rows] = value


def _reset_moments(optimizer: torch.optim.Optimizer | None, param: Tensor, index: Any) -> None:
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    with torch.no_grad():
        for key in _MOMENT_KEYS:
            moment = state.get(key)
            if isinstance(moment, Tensor) and moment.shape == param.shape:
                moment[index] = 0.0


def _neurons(report: Report, site: str, tau: float | None) -> Tensor | None:
    neurons = report.neurons.get(site)
    if neurons is None:
        return None
    chosen = neurons.dead.clone()
    if tau is not None:
        score = neurons.dormant_score
        chosen |= score.nan_to_num(nan=0.0) <= tau
    return chosen.nonzero().flatten()


def recycle(
    model: nn.Module,
    report: Report,
    example: Any = None,
    *,
    method: str = "redo",
    tau: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    in_place: bool = False,
    sites: Sequence[str] | None = None,
    links: Topology | None = None,
    seed: int = 0,
) -> RecycleResult:
    """ReDo: recycle the dead (and, with ``tau``, the τ-dormant) neurons that ``report`` found.

    ``example`` is one batch (as the scan's data yields them) for the topology forward, or
    ``links`` a ``topology()`` computed before. Works on a deep copy unless ``in_place``;
    ``optimizer`` (needs ``in_place``) gets the moments of the touched rows and columns zeroed.
    ``sites`` restricts the treatment to those names. The new rows are drawn from ``seed`` and
    the layer's name, so a treatment is reproducible (``Recycler`` passes the window index).
    """
    if method != "redo":
        raise NeurodiagError(f"unknown recycling method {method!r}; the one method is 'redo'")
    if optimizer is not None and not in_place:
        raise NeurodiagError(
            "an optimizer holds the model's own parameters: pass in_place=True with it"
        )
    if tau is not None and not tau >= 0:
        raise NeurodiagError(f"tau must be a number >= 0, got {tau!r}")
    if links is None and example is None:
        raise NeurodiagError("recycle needs an example batch (or links=topology(model, batch))")
    target = model if in_place else copy.deepcopy(model)
    result = RecycleResult(target)
    if links is None:
        links = topology(target, example)
    for row in report.rows:
        site = str(row["site"])
        if sites is not None and site not in sites:
            continue
        chosen = _neurons(report, site, tau)
        if chosen is None or not len(chosen):
            continue
        if ":" in site:
            result.untreated.append((site, "a functional call: no module to recycle"))
            continue
        link = links.get(site.split("#", 1)[0], "not seen in the topology forward")
        if isinstance(link, str):
            result.untreated.append((site, link))
            continue
        result.treated.append(_apply(target, link, site, chosen, optimizer, seed))
    return result


def _apply(
    model: nn.Module,
    link: Link,
    site: str,
    chosen: Tensor,
    optimizer: torch.optim.Optimizer | None,
    seed: int,
) -> TreatedSite:
    producers = [model.get_submodule(name) for name in link.producers]
    rows = chosen.to(_weight(producers[0]).device)
    for name, layer in zip(link.producers, producers, strict=True):
        _reset_rows(layer, rows, optimizer, zlib.crc32(f"{seed}:{name}".encode()))
    if link.norm is not None:
        _reset_norm(model.get_submodule(link.norm), rows, optimizer)
    _zero_columns(model.get_submodule(link.consumer), rows, optimizer)
    names = link.producers + ((link.norm,) if link.norm is not None else ())
    width = int(_weight(producers[0]).shape[0])
    return TreatedSite(site, names, link.consumer, tuple(int(i) for i in chosen), width)


def swap_failing(model: nn.Module, report: Report, spec: str, example: Any) -> RecycleResult:
    """The other treatment: the activation of every error site (see ``report.health``) swapped
    for ``spec`` on a copy, fitted to the old activation (``swap_activations(init="fit")``), so
    outputs change only as much as the fit differs. Counts every neuron of a swapped site."""
    from neurodiag.report.health import severity
    from neurodiag.swap import swap_with_report

    failing = [
        str(r["site"]) for r in report.rows if severity(r, report.header.flag_gates) == "error"
    ]
    result = RecycleResult(copy.deepcopy(model))
    if not failing:
        return result
    swapped = swap_with_report(model, spec, failing, example_batch=example, init="fit")
    result.model = swapped.model
    widths = {str(r["site"]): int(r["neurons"]) for r in report.rows}
    for site in swapped.swapped:
        width = widths.get(site.site, site.num_features or 0)
        result.treated.append(
            TreatedSite(site.site, (), f"{site.old} -> {spec}", tuple(range(width)), width)
        )
    result.untreated.extend(swapped.not_swapped)
    return result
