"""Reduce per-site statistics across the ranks of a torch.distributed job.

Every rank must all-reduce the same sites in the same order, even a rank that saw no batch (or a
site no batch of its reached), so the site lists are first gathered and united; missing sites get
empty accumulators. Each state is then reduced with its declared op (sum/min/max).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from neurodiag.sites.site import Site, SiteKey
from neurodiag.stats.site_stats import SiteStats, StatOptions


def _describe(site: Site) -> tuple[Any, ...]:
    key = site.key
    return (
        key.module,
        key.op,
        key.index,
        site.activation,
        site.kind,
        site.feature_dim,
        site.neurons,
        site.delta_bar,
        str(site.stats.dtype).removeprefix("torch."),
    )


def all_reduce_sites(
    sites: dict[SiteKey, Site], options: StatOptions, device: torch.device | None = None
) -> dict[SiteKey, Site]:
    """Return the sites of all ranks, in rank-0-first order, with globally reduced statistics."""
    world = dist.get_world_size()
    gathered: list[list[tuple[Any, ...]]] = [[] for _ in range(world)]
    dist.all_gather_object(gathered, [_describe(s) for s in sites.values()])
    if device is None:
        device = next((s.stats.device for s in sites.values()), torch.device("cpu"))
    united: dict[SiteKey, Site] = {}
    for rank_sites in gathered:
        for (
            module,
            op,
            index,
            activation,
            kind,
            feature_dim,
            neurons,
            delta_bar,
            dtype,
        ) in rank_sites:
            key = SiteKey(module, op, index)
            if key in united:
                continue
            mine = sites.get(key)
            if mine is None:
                stats = SiteStats(neurons, device, getattr(torch, dtype), options)
                mine = Site(key, activation, kind, feature_dim, neurons, delta_bar, stats)
            united[key] = mine
    for site in united.values():
        site.stats.all_reduce()
    return united


def copy_site(site: Site, stats: SiteStats) -> Site:
    return replace(site, stats=stats)
