"""The proof of a treatment: before/after rows of the two scans, how much the outputs moved,
and what stayed dead and why (``assess``).

Why fresh units die again, the cause ``assess`` recognises: a unit's pre-activation is
z_n = w·x_n + b. When the inputs x_n of every sample point (nearly) the same way, z_n has the
same sign for every sample whatever w is, so a fresh row drawn from the layer's init is dead on
all of them with a probability near one half. This is what depth does to a plain ReLU net (the
samples' representations become parallel layer after layer); recycling cannot change the input,
only a change of the model (an activation that cannot die, normalisation, a residual branch) can.
Measured per layer as C = ‖mean_n x_n/‖x_n‖‖², the mean cosine over every ordered pair (n, m)
of its input vectors (one per sample and position, along the layer's input unit axis; all-zero
vectors are left out, and a layer whose inputs are all zero has C = 1): C = 1 when they are all
parallel, near 0 for unrelated ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.batch import map_tensors, split_batch
from neurodiag.model_state import model_device, preserved
from neurodiag.report.model import Report
from neurodiag.treat.recycle import COLLAPSED, UNTREATED, Outcome, RecycleResult, StillDead
from neurodiag.treat.topology import Link, feature_dim, topology

#: A site at or above this dead % on the re-scan is still dead.
STILL_DEAD_PCT = 10.0
#: A layer input with C at or above this is collapsed (on the 50-layer sample MLP, C passes 0.9
#: at layer 12 and 0.96 at layer 16, past which a quarter to a third of fresh rows die again).
COLLAPSED_COSINE = 0.9


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


def input_cosine(
    model: nn.Module, batches: Sequence[Any], layers: Mapping[str, str], mode: str = "eval"
) -> dict[str, float]:
    """C of the input of each layer named in ``layers`` (key -> layer name), over ``batches``
    (forward only, no grad; the model's modes and buffers are restored)."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, layer: nn.Module) -> Any:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if not isinstance(x, Tensor) or x.dim() == 0 or not x.is_floating_point():
                return
            axis = feature_dim(layer, x.dim())
            flat = x.detach().movedim(axis, -1).reshape(-1, x.shape[axis]).to(torch.float64)
            norms = flat.norm(dim=1)
            keep = (norms > 0) & norms.isfinite()
            units = (flat[keep] / norms[keep, None]).sum(0)
            sums[name] = sums[name] + units if name in sums else units
            counts[name] = counts.get(name, 0) + int(keep.sum())

        return pre_hook

    wanted = set(layers.values())
    handles = [
        module.register_forward_pre_hook(hook(name, module))
        for name, module in model.named_modules()
        if name in wanted
    ]
    device = model_device(model)
    move = lambda t: t.to(device)  # noqa: E731
    try:
        with torch.no_grad(), preserved(model):
            model.train(mode == "train")
            for batch in batches:
                split = split_batch(batch)
                model(*map_tensors(split.args, move), **map_tensors(split.kwargs, move))
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for key, name in layers.items():
        if name in sums and counts[name]:
            out[key] = float((sums[name] / counts[name]).square().sum())
        elif name in counts:  # every input vector was zero: the same input for every sample
            out[key] = 1.0
    return out


def assess(
    result: RecycleResult,
    after: Report,
    batches: Sequence[Any],
    *,
    dead_pct: float = STILL_DEAD_PCT,
    collapse: float = COLLAPSED_COSINE,
) -> Outcome:
    """What the re-scan ``after`` of ``result.model`` shows, kept as ``result.outcome``: the
    sites still at ``dead_pct`` or more and, where recognisable, why (left untreated, or an
    input with C ≥ ``collapse``, measured on ``batches``)."""
    links = result.links
    if links is None and batches:
        links = topology(result.model, batches[0])
    why = dict(result.untreated)
    still = []
    for row in after.rows:
        value = row.get("dead_pct")
        if isinstance(value, int | float) and not math.isnan(value) and value >= dead_pct:
            still.append((str(row["site"]), float(value)))
    producers = {}
    for site, _ in still:
        link = (links or {}).get(site.split("#", 1)[0])
        if isinstance(link, Link) and ":" not in site:
            producers[site] = link.producers[0]
    cosines = input_cosine(result.model, batches, producers, after.header.mode) if producers else {}
    found = []
    for site, value in still:
        cosine = cosines.get(site)
        if site in why:
            cause = f"{UNTREATED}: {why[site]}"
        elif cosine is not None and cosine >= collapse:
            cause = COLLAPSED
        else:
            cause = ""
        found.append(StillDead(site, value, cause, cosine))
    outcome = Outcome(
        recycled=result.recycled,
        treated_sites=len(result.treated),
        sites=len(after.rows),
        dead_pct=dead_pct,
        collapse=collapse,
        still_dead=tuple(found),
    )
    result.outcome = outcome
    return outcome
