"""Compare activations on the user's own model: baseline vs swapped variants, trained alike."""

from neurodiag.compare.engine import CompareProgress, compare
from neurodiag.compare.summary import SUMMARY_COLUMNS, Comparison, VariantResult, site_summary

__all__ = [
    "SUMMARY_COLUMNS",
    "CompareProgress",
    "Comparison",
    "VariantResult",
    "compare",
    "site_summary",
]
