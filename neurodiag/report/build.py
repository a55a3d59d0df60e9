"""From measured sites to a ``Report``: the one host read of a scan or a Monitor window."""

from __future__ import annotations

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
        rows.append({"site": name, "activation": site.activation, "kind": site.kind, **summary.row})
        neurons[name] = SiteNeurons(**summary.neurons)
    return Report(header=header, rows=rows, neurons=neurons)
