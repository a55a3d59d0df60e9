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

from neurodiag.batch import map_tensors, split_batch
from neurodiag.errors import NeurodiagError
from neurodiag.model_state import model_device, preserved
from neurodiag.report.model import Report

_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Modules that keep each channel (or feature) where it is, so the reader behind them still
#: reads the recycled units' own columns: dropout, identity, per-channel pooling.
_PASS_THROUGH = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
)  # fmt: skip
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


@dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: tuple[int, ...]
    output: int | None


class TopologyTrace:
    """Records every leaf module call of whatever runs inside ``with`` (one forward, or one
    training step of any style), in order, with the ids of its tensors; ``links()`` after it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: list[_Call] = []
        self._keep: list[Tensor] = []  # ids stay unique while the tensors live
        self._handles: list[Any] = []

    def __enter__(self) -> TopologyTrace:
        names = {module: name for name, module in self.model.named_modules()}

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            tensors = [a for a in args if isinstance(a, Tensor)]
            out = output if isinstance(output, Tensor) else None
            self._keep.extend([*tensors, *([out] if out is not None else [])])
            ident = None if out is None else id(out)
            self.calls.append(_Call(names[module], module, tuple(map(id, tensors)), ident))

        leaves = [m for m in self.model.modules() if not list(m.children())]
        self._handles = [m.register_forward_hook(hook) for m in leaves]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def links(self) -> Topology:
        links = _links(self.model, self.calls)
        self._keep = []
        return links


def _trace(model: nn.Module, batch: Any) -> list[_Call]:
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
    return trace.calls


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
            return call, norm, ""
        return None, None, f"fed by {type(call.module).__name__} {call.name!r}"
    return None, None, "no Linear/Conv feeding it was seen"


def _consumer(calls: list[_Call], index: int) -> tuple[_Call | None, str]:
    """The one Linear/Conv reading the output of the call at ``index`` (through Dropout)."""
    wanted = calls[index].output
    start = index
    while True:
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
    norm: str | None  # a BatchNorm between producer and activation
    consumer: str  # the Linear/Conv whose columns are zeroed


#: activation module name -> its Link, or why it cannot be treated
Topology = dict[str, "Link | str"]


def topology(model: nn.Module, example: Any) -> Topology:
    """The Link of every activation-like leaf module, from one forward of ``example`` (no
    grad, the model's modes and buffers restored). Computed once, it serves every later
    ``recycle`` of the same model (``Recycler`` does that during training)."""
    return _links(model, _trace(model, example))


def _links(model: nn.Module, calls: list[_Call]) -> Topology:
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
        consumer, why = _consumer(calls, indices[0])
        links[name] = (
            why
            if consumer is None
            else Link((producer.name,), None if norm is None else norm.name, consumer.name)
        )
    return links


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


def output_change(before: nn.Module, after: nn.Module, batches: Sequence[Any]) -> float:
    """The largest absolute difference of the two models' outputs on ``batches`` (eval mode,
    every tensor of the output): ~0 after ReDo. Both models' modes are restored."""
    worst = 0.0
    device = model_device(before)
    move = lambda t: t.to(device)  # noqa: E731
    with torch.no_grad(), preserved(before), preserved(after):
        before.eval()
        after.eval()
        for batch in batches:
            split = split_batch(batch)
            args, kwargs = map_tensors(split.args, move), map_tensors(split.kwargs, move)
            outs = [_tensors(m(*args, **kwargs)) for m in (before, after)]
            for a, b in zip(*outs, strict=True):
                if a.is_floating_point():
                    worst = max(worst, float((a - b).abs().max()) if a.numel() else 0.0)
    return worst


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    return [t for v in getattr(value, "values", lambda: [])() for t in _tensors(v)]


def before_after(before: Report, after: Report, result: RecycleResult) -> list[dict[str, Any]]:
    """One row per site: dead % before and after, units recycled, why a site was not treated."""
    treated = {t.site: t for t in result.treated}
    why = dict(result.untreated)
    after_rows = {str(r["site"]): r for r in after.rows}
    rows = []
    for row in before.rows:
        site = str(row["site"])
        other = after_rows.get(site, {})
        rows.append(
            {
                "site": site,
                "neurons": row.get("neurons"),
                "dead_pct_before": row.get("dead_pct"),
                "dead_pct_after": other.get("dead_pct"),
                "recycled": len(treated[site].neurons) if site in treated else 0,
                "note": why.get(site, ""),
            }
        )
    return rows


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
