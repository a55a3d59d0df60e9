"""Reduce per-site statistics across the ranks of a torch.distributed job.

Every rank must all-reduce the same sites in the same order, even a rank that saw no batch (or a
site no batch of its reached), so the site lists are first gathered and united; missing sites get
empty accumulators. Each state is then reduced with its declared op (sum/min/max).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any, cast

import torch
import torch.distributed as dist

from neurodiag.config import ScanConfig
from neurodiag.sites.site import Site, SiteKey
from neurodiag.stats.bundle import SiteStats, SiteSummary, summarize_sites


def stats_of(site: Site) -> SiteStats:
    """The statistics a scan or Monitor gave this site (its sink is a ``SiteStats``)."""
    return cast(SiteStats, site.stats)


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
        str(stats_of(site).dtype).removeprefix("torch."),
        site.impl,
        site.role,
        site.axis_source,
        site.axis_note,
    )


def all_reduce_sites(
    sites: dict[SiteKey, Site], config: ScanConfig, device: torch.device | None = None
) -> dict[SiteKey, Site]:
    """Return the sites of all ranks, in rank-0-first order, with globally reduced statistics."""
    world = dist.get_world_size()
    gathered: list[list[tuple[Any, ...]]] = [[] for _ in range(world)]
    dist.all_gather_object(gathered, [_describe(s) for s in sites.values()])
    if device is None:
        device = next((stats_of(s).device for s in sites.values()), torch.device("cpu"))
    layout = next((stats_of(s).layout for s in sites.values()), None)  # (if of this config)
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
            impl,
            role,
            axis_source,
            axis_note,
        ) in rank_sites:
            key = SiteKey(module, op, index)
            mine = united.get(key) or sites.get(key)
            if mine is not None:
                if role == "gate":  # a gate on any rank is a gate (the same module everywhere)
                    mine.role = "gate"
                united[key] = mine
                continue
            stats = SiteStats(neurons, device, getattr(torch, dtype), config, layout=layout)
            mine = Site(
                key,
                activation,
                kind,
                feature_dim,
                neurons,
                delta_bar,
                stats,
                impl=impl,
                role=role,
                axis_source=axis_source,
                axis_note=axis_note,
            )
            united[key] = mine
    for site in united.values():
        stats_of(site).all_reduce()
    return united


def copy_site(site: Site, stats: SiteStats) -> Site:
    """The same site over other statistics (a merged Monitor total)."""
    return replace(site, stats=stats, _hooks={})


def summarize(sites: Iterable[Site]) -> list[SiteSummary]:
    """Each site's summary, in order, with one host transfer for all (``summarize_sites``)."""
    listed = list(sites)
    return summarize_sites([stats_of(s) for s in listed], [s.delta_bar for s in listed])
