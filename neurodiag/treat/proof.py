"""The proof of a treatment: before/after rows of the two scans, and how much the outputs moved."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.batch import map_tensors, split_batch
from neurodiag.model_state import model_device, preserved
from neurodiag.report.model import Report
from neurodiag.treat.recycle import RecycleResult


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
