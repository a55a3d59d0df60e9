"""``recycle``: ReDo (Sokar et al., 2023) or ReGraMa (Liu et al., 2025) on a user's model.

``method="redo"`` (the default): for each dead (or τ-dormant) neuron of a site, as the report
found them, the incoming weights of the layer producing it are re-initialised as that layer's own
``reset_parameters`` would draw them, and the outgoing weights of the layer reading it are zeroed,
so the network computes exactly what it computed before (the recycled units contribute 0) while
the units can learn again.

``method="regrama"``: the units whose pre-activation gets almost no gradient (G_i ≤ τ, see
``neurodiag.treat.gradients``) get the same fresh incoming rows, and small non-zero outgoing
weights (``OUTGOING_SCALE`` × the mean |w| of the reader's live columns) so that gradient reaches
them at once; the outputs move a little. Zeroed outgoing weights would leave such a unit where
it was: no gradient. A unit that fires but whose outgoing weights are 0 is invisible to ReDo's
activation score and is exactly what ReGraMa finds.

Both methods reset the treated units' entries of a normalisation layer between the producer and
the activation to identity (weight 1, bias 0, running mean 0, running variance 1). A LayerNorm,
RMSNorm or GroupNorm there mixes the units of a sample, so a fresh row moves the other units'
outputs too: ReDo then keeps the outputs only approximately.

Topology is read from one forward of an example batch, by tensor identity between module
calls, never guessed from names or registration order. Covered:

- ``Linear → act → Linear`` (transformer MLPs ``fc1 → act → fc2`` included), with ``Dropout``,
  ``Identity`` or per-channel pooling (``MaxPool``/``AvgPool``) between the activation and its
  reader;
- ``Linear/Conv → [norm] → act → Linear/Conv`` per unit (groups = 1), the norm a BatchNorm,
  LayerNorm, RMSNorm or GroupNorm whose entries are one per unit;
- gated MLPs (``act_fn(gate_proj(x)) * up_proj(x) → down_proj``, the Hugging Face naming):
  gate and up rows re-initialised, down columns zeroed.

Anything else (an output read by several layers, a concatenation, a flatten into a Linear,
functional sites, a module called more than once per forward, an activation whose output is the
model's output) is named in ``untreated`` with the reason, and left alone.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.errors import NeurodiagError
from neurodiag.loss import UserLoss
from neurodiag.report.model import Report
from neurodiag.treat.gradients import measure_grama
from neurodiag.treat.shrink_perturb import check_shrink_perturb, shrink_perturb
from neurodiag.treat.topology import Link, Topology, topology
from neurodiag.treat.units import (
    fresh_layer,
    layer_weight,
    reset_moments,
    reset_norm,
    reset_rows,
    zero_columns,
)

#: The methods that treat the units a report (or the gradient score) found.
METHODS = ("redo", "regrama")
#: ``recycle``'s methods: those, and Shrink & Perturb on the whole network (no report needed).
RECYCLE_METHODS = (*METHODS, "shrink_perturb")
#: ReGraMa's threshold on G_i when ``tau`` is not given (the paper's and AgileRL's default).
GRAMA_TAU = 0.01
#: ReGraMa: a revived unit's outgoing weights have this mean |w| relative to the mean |w| of the
#: reader's live columns (those of the units not revived), so it gets gradient at once.
OUTGOING_SCALE = 0.02
#: Shrink & Perturb's defaults (λ, σ): Ash & Adams' warm-start trick at the scale they used.
SHRINK = 0.4
PERTURB = 0.1


@dataclass(frozen=True)
class TreatedSite:
    site: str
    #: the layers whose rows were re-initialised, and the one whose columns were zeroed
    producers: tuple[str, ...]
    consumer: str
    neurons: tuple[int, ...]
    width: int


#: ``StillDead.cause`` when the site's input has collapsed (``neurodiag.treat.proof``).
COLLAPSED = "collapsed input"
#: ``StillDead.cause`` prefix of a site the treatment left alone (the reason follows).
UNTREATED = "untreated"


@dataclass(frozen=True)
class StillDead:
    """A site at or above the threshold dead % on the re-scan after treatment."""

    site: str
    dead_pct: float
    #: ``COLLAPSED``, ``"untreated: <why>"``, or ``""`` when no cause is recognised
    cause: str
    #: C = mean pairwise cosine of the input vectors of the layer feeding the site, over every
    #: sample (and position) scanned; None where not measured (no producer known)
    input_cosine: float | None


@dataclass(frozen=True)
class Outcome:
    """The after-state of a treatment, from the re-scan (``neurodiag.treat.proof.assess``)."""

    recycled: int
    treated_sites: int
    sites: int
    #: a site counts as still dead at ``dead_pct`` or more on the re-scan
    dead_pct: float
    #: an input counts as collapsed at a mean pairwise cosine of ``collapse`` or more
    collapse: float
    still_dead: tuple[StillDead, ...] = ()

    def with_cause(self, prefix: str) -> tuple[StillDead, ...]:
        """The still-dead sites whose cause starts with ``prefix`` ("" for the unexplained)."""
        if not prefix:
            return tuple(s for s in self.still_dead if not s.cause)
        return tuple(s for s in self.still_dead if s.cause.startswith(prefix))


@dataclass
class RecycleResult:
    """What ``recycle`` did: the (copied or given) model, the treated sites, the others; after
    ``neurodiag.treat.proof.assess`` also the re-scan's ``outcome``."""

    model: nn.Module
    treated: list[TreatedSite] = field(default_factory=list)
    untreated: list[tuple[str, str]] = field(default_factory=list)
    method: str = "redo"
    #: the topology the treatment used (None for a swap or Shrink & Perturb)
    links: Topology | None = None
    outcome: Outcome | None = None
    #: Shrink & Perturb: the modules whose parameters were shrunk and perturbed
    perturbed: list[str] = field(default_factory=list)

    @property
    def recycled(self) -> int:
        return sum(len(t.neurons) for t in self.treated)


def _small_columns(
    layer: nn.Module, cols: Tensor, optimizer: torch.optim.Optimizer | None, seed: int
) -> None:
    """ReGraMa's outgoing weights: each revived column is a fresh draw of the layer's init,
    rescaled so its mean |w| is ``OUTGOING_SCALE`` × the mean |w| over the live columns (every
    entry of the columns not revived; the fresh draw's own mean |w| when none is live or all
    are 0). Small, so the outputs barely move; non-zero, so the unit gets gradient."""
    weight = layer_weight(layer)
    fresh = layer_weight(fresh_layer(layer, seed)).to(weight)
    live = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    live[cols] = False
    with torch.no_grad():
        scale = weight[:, live].abs().mean() if bool(live.any()) else weight.new_zeros(())
        if not bool(scale > 0):
            scale = fresh.abs().mean()
        draw = fresh[:, cols]
        dims = [d for d in range(draw.dim()) if d != 1]
        size = draw.abs().mean(dim=dims, keepdim=True)
        unit = torch.where(size > 0, draw / size.clamp_min(torch.finfo(draw.dtype).tiny), 1.0)
        weight[:, cols] = OUTGOING_SCALE * scale * unit
    reset_moments(optimizer, weight, (slice(None), cols))


def _neurons(report: Report, site: str, tau: float | None) -> Tensor | None:
    neurons = report.neurons.get(site)
    if neurons is None:
        return None
    chosen = neurons.dead.clone()
    if tau is not None:
        score = neurons.dormant_score
        chosen |= score.nan_to_num(nan=0.0) <= tau
    return chosen.nonzero().flatten()


def _grad_dormant(scores: Mapping[str, Tensor], site: str, tau: float) -> Tensor | None:
    score = scores.get(site.split("#", 1)[0])
    if score is None:
        return None
    return (score.nan_to_num(nan=float("inf")) <= tau).nonzero().flatten()


def recycle(
    model: nn.Module,
    report: Report | None = None,
    example: Any = None,
    *,
    method: str = "redo",
    tau: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    in_place: bool = False,
    sites: Sequence[str] | None = None,
    links: Topology | None = None,
    seed: int = 0,
    grad_scores: Mapping[str, Tensor] | None = None,
    loss_fn: UserLoss | None = None,
    shrink: float = SHRINK,
    perturb: float = PERTURB,
) -> RecycleResult:
    """Recycle the units of the sites of ``report`` that ``method`` finds dormant.

    ``redo``: the dead (and, with ``tau``, the τ-dormant) neurons the report found; fresh rows
    in, zeroed columns out. ``regrama``: the units with G_i ≤ ``tau`` (default ``GRAMA_TAU``),
    G read from ``grad_scores`` (by activation module name, as ``measure_grama`` or a
    ``PreActivationGrads`` gives them) or else measured on ``example`` with ``loss_fn`` (the
    scan's loss rule); fresh rows in, small non-zero columns out.

    ``example`` is one batch (as the scan's data yields them) for the topology forward, or
    ``links`` a ``topology()`` computed before. Works on a deep copy unless ``in_place``;
    ``optimizer`` (needs ``in_place``) gets the moments of the touched rows and columns zeroed.
    ``sites`` restricts the treatment to those names. The new weights are drawn from ``seed`` and
    the layer's name, so a treatment is reproducible (``Recycler`` passes the window index).

    ``shrink_perturb``: every parameter θ ← ``shrink``·θ + ``perturb``·ε, ε a fresh draw of its
    layer's init (``neurodiag.treat.shrink_perturb``); no report, example or topology needed,
    the optimiser's state is left alone; ``result.perturbed`` names the modules treated.
    """
    if method not in RECYCLE_METHODS:
        raise NeurodiagError(
            f"unknown recycling method {method!r}; "
            f"use one of {', '.join(map(repr, RECYCLE_METHODS))}"
        )
    if optimizer is not None and not in_place:
        raise NeurodiagError(
            "an optimizer holds the model's own parameters: pass in_place=True with it"
        )
    if method == "shrink_perturb":
        check_shrink_perturb(shrink, perturb)
        target = model if in_place else copy.deepcopy(model)
        result = RecycleResult(target, method=method)
        result.perturbed, result.untreated = shrink_perturb(
            target, shrink=shrink, perturb=perturb, seed=seed
        )
        return result
    if report is None:
        raise NeurodiagError(f"recycle(method={method!r}) needs the scan's report")
    if tau is not None and not tau >= 0:
        raise NeurodiagError(f"tau must be a number >= 0, got {tau!r}")
    if links is None and example is None:
        raise NeurodiagError("recycle needs an example batch (or links=topology(model, batch))")
    if method == "regrama" and grad_scores is None and example is None:
        raise NeurodiagError("regrama needs grad_scores or an example batch to measure them on")
    target = model if in_place else copy.deepcopy(model)
    if links is None:
        links = topology(target, example)
    result = RecycleResult(target, method=method, links=links)
    if method == "regrama" and grad_scores is None:
        grad_scores = measure_grama(
            target, [example], links, loss_fn=loss_fn, mode=report.header.mode, seed=seed
        )
    for row in report.rows:
        site = str(row["site"])
        if sites is not None and site not in sites:
            continue
        if method == "redo" or grad_scores is None:
            chosen = _neurons(report, site, tau)
        else:  # a site G was not measured at (no link): its dead units, whose G is 0
            chosen = _grad_dormant(grad_scores, site, GRAMA_TAU if tau is None else tau)
            chosen = _neurons(report, site, None) if chosen is None else chosen
        if chosen is None or not len(chosen):
            continue
        if ":" in site:
            result.untreated.append((site, "a functional call: no module to recycle"))
            continue
        link = links.get(site.split("#", 1)[0], "not seen in the topology forward")
        if isinstance(link, str):
            result.untreated.append((site, link))
            continue
        width = int(layer_weight(target.get_submodule(link.producers[0])).shape[0])
        if int(row["neurons"]) != width:  # neurons along another axis (--feature-dim): not units
            why = f"its {row['neurons']} neurons are not the {width} units of {link.producers[0]}"
            result.untreated.append((site, f"{why} (measured along another axis)"))
            continue
        result.treated.append(_apply(target, link, site, chosen, width, optimizer, seed, method))
    return result


def _apply(
    model: nn.Module,
    link: Link,
    site: str,
    chosen: Tensor,
    width: int,
    optimizer: torch.optim.Optimizer | None,
    seed: int,
    method: str = "redo",
) -> TreatedSite:
    producers = [model.get_submodule(name) for name in link.producers]
    rows = chosen.to(layer_weight(producers[0]).device)
    for name, layer in zip(link.producers, producers, strict=True):
        reset_rows(layer, rows, optimizer, zlib.crc32(f"{seed}:{name}".encode()))
    if link.norm is not None:
        reset_norm(model.get_submodule(link.norm), rows, optimizer)
    consumer = model.get_submodule(link.consumer)
    if method == "regrama":
        _small_columns(
            consumer, rows, optimizer, zlib.crc32(f"{seed}:{link.consumer}:out".encode())
        )
    else:
        zero_columns(consumer, rows, optimizer)
    names = link.producers + ((link.norm,) if link.norm is not None else ())
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
    result = RecycleResult(copy.deepcopy(model), method=f"swap:{spec}")
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
