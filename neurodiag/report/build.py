"""From measured sites to a ``Report``: the one host read of a scan or a Monitor window."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from neurodiag.report.model import Report, ScanHeader, SiteNeurons
from neurodiag.sites.site import Site, SiteKey, display_names
from neurodiag.stats.sync import summarize


def build_report(sites: dict[SiteKey, Site], header: ScanHeader) -> Report:
    """Summarise each site (the one host read of a scan) into report rows, in forward order."""
    rows: list[dict[str, Any]] = []
    neurons: dict[str, SiteNeurons] = {}
    names = display_names(list(sites))
    summaries = summarize(sites.values())
    for (key, site), summary in zip(sites.items(), summaries, strict=True):
        name = names[key]
        identity = {
            "site": name,
            "activation": site.activation,
            "class": site.impl,
            "kind": site.kind,
            "role": site.role,
            "feature_dim": site.feature_dim,
        }
        rows.append({**identity, **summary.row})
        neurons[name] = SiteNeurons(**summary.neurons)
    notes = axis_notes([(names[key], site) for key, site in sites.items()])
    if notes:
        header = replace(header, notes=(*header.notes, *notes))
    return Report(header=header, rows=rows, neurons=neurons)


_NAMES_SHOWN = 6


def axis_notes(sites: list[tuple[str, Site]]) -> list[str]:
    """Notes on neuron dims that may be wrong: the shape rule chose, or an op's inputs disagreed."""
    notes: list[str] = []
    ruled = [name for name, site in sites if site.axis_source == "rule" and site.axis_note]
    if ruled:
        shown = ", ".join(ruled[:_NAMES_SHOWN]) + (" ..." if len(ruled) > _NAMES_SHOWN else "")
        notes.append(
            f"neuron dim from the shape rule at {len(ruled)} site(s) with 3+ dims, as no layer "
            f"feeding them was followed: {shown}; if wrong, set --feature-dim 'SITE=DIM'"
        )
    for name, site in sites:
        if site.axis_source not in ("rule", "override") and site.axis_note:
            notes.append(
                f"neuron dim of {name}: {site.axis_note}; if wrong, set --feature-dim '{name}=DIM'"
            )
    return notes
