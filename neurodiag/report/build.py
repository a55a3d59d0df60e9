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
    named = [(names[key], site) for key, site in sites.items()]
    notes = axis_notes(named) + moe_notes(named)
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


def _merges_experts(site: Site) -> bool:
    """Measured in an ``experts`` module shared by every expert, not in one expert's own module
    or split by expert id (``experts.3.act_fn``, ``neurodiag.sites.experts``)."""
    parts = site.key.module.split(".") if site.key.module else []
    return any(
        part == "experts" and not (i + 1 < len(parts) and parts[i + 1].isdigit())
        for i, part in enumerate(parts)
    )


def moe_notes(sites: list[tuple[str, Site]]) -> list[str]:
    """Mixture-of-experts sites whose neurons merge the experts (issue 26).

    Hugging Face experts whose routing the recorder follows are split per expert
    (``neurodiag.sites.experts``); elsewhere one activation may serve every expert: the site's
    neurons are the intermediate units of all experts together (a unit dead in one expert is
    alive if another expert's is), and call #k may be the k-th expert run, not expert k.
    """
    merged = [name for name, site in sites if _merges_experts(site)]
    if not merged:
        return []
    shown = ", ".join(merged[:_NAMES_SHOWN]) + (" ..." if len(merged) > _NAMES_SHOWN else "")
    return [
        f"{len(merged)} mixture-of-experts site(s) merge the experts: each neuron is one "
        "intermediate unit of all experts together (a unit dead in one expert only is not dead "
        f"here), and call #k is the k-th expert run, not expert k: {shown}"
    ]
