"""Per-neuron statistics: each declared once (``registry``), fed by one path (``reductions``)."""

from neurodiag.stats.bundle import SiteStats, SiteSummary, summarize_sites
from neurodiag.stats.registry import STATISTICS, all_columns
from neurodiag.stats.statistic import Column, Statistic, Threshold

__all__ = [
    "STATISTICS",
    "Column",
    "SiteStats",
    "SiteSummary",
    "Statistic",
    "Threshold",
    "all_columns",
    "summarize_sites",
]
