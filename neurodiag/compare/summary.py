"""What a comparison returns: per-variant history, final site rows and a one-line summary.

Every number here is read from ``neurodiag.scan`` reports (and the training loop's loss and
accuracy); nothing is measured again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from neurodiag.monitor.window import summarize_rows
from neurodiag.report.model import COLUMNS, Report

SUMMARY_COLUMNS: tuple[str, ...] = (
    "variant",
    "activation",
    "mean_dead_pct",
    "max_dead_pct",
    "train_mean_dead_pct",
    "train_max_dead_pct",
    "first_site_mag",
    "min_abs_deriv",
    "delta_bar",
    "bound_ok",
    "loss",
    "accuracy",
    "time_s",
)


def site_summary(report: Report) -> dict[str, Any]:
    """Scan-wide numbers of one report: dead % (mean/max over sites), first-site MAG, bounds.

    The first four are the Monitor's window summary (``summarize_rows``); ``delta_bar`` is the
    smallest δ̄ over Bernstein sites (NaN without any); ``bound_ok`` is True when every Bernstein
    site kept min |σ'| ≥ δ̄, None without Bernstein sites.
    """
    rows = report.rows
    bern = [r for r in rows if not _isnan(r["delta_bar"])]
    summary = summarize_rows(rows)
    return {
        "mean_dead_pct": summary["mean_dead_pct"],
        "max_dead_pct": summary["max_dead_pct"],
        "first_site_mag": summary["first_site_mag"],
        "min_abs_deriv": summary["min_abs_deriv"],
        "delta_bar": _nanmin(float(r["delta_bar"]) for r in bern),
        "bound_ok": all(r["bound_ok"] is True for r in bern) if bern else None,
    }


def train_window_summary(window: Report | None) -> dict[str, Any]:
    """Mean/max dead % over the sites in one epoch's training steps (NaN: none measured)."""
    summary = summarize_rows(window.rows if window is not None else [])
    return {
        "train_mean_dead_pct": summary["mean_dead_pct"],
        "train_max_dead_pct": summary["max_dead_pct"],
    }


@dataclass
class VariantResult:
    """One variant: ``history`` has one dict per recorded epoch (0 = initialisation).

    ``report`` is the scan after the last epoch; ``train_window`` the Monitor's report of the
    last epoch's training steps (the paper's Fig. 3 window; None without training);
    ``wall_time_s`` the variant's training and scans.
    """

    name: str
    activation: str
    history: list[dict[str, Any]]
    report: Report
    model: nn.Module
    notes: list[str] = field(default_factory=list)
    train_window: Report | None = None
    wall_time_s: float = 0.0

    @property
    def sites(self) -> list[dict[str, Any]]:
        """Final per-site rows (the columns of a scan)."""
        return self.report.rows

    @property
    def summary(self) -> dict[str, Any]:
        last = self.history[-1]
        out: dict[str, Any] = {"variant": self.name, "activation": self.activation}
        out.update(site_summary(self.report))
        out.update(train_window_summary(self.train_window))
        out["loss"] = last["loss"]
        out["accuracy"] = last["accuracy"]
        out["time_s"] = self.wall_time_s
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "activation": self.activation,
            "history": [_jsonable(h) for h in self.history],
            "sites": [_jsonable(r) for r in self.sites],
            "summary": _jsonable(self.summary),
            "train_window_sites": (
                [_jsonable(r) for r in self.train_window.rows] if self.train_window else None
            ),
            "notes": list(self.notes),
        }


@dataclass
class Comparison:
    """Variants trained and scanned under identical conditions; see ``neurodiag.compare``."""

    variants: list[VariantResult]
    seed: int
    epochs: int
    settings: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def variant(self, name: str) -> VariantResult:
        for result in self.variants:
            if result.name == name:
                return result
        names = ", ".join(v.name for v in self.variants)
        raise KeyError(f"no variant named {name!r}; variants: {names}")

    def summary_frame(self) -> pd.DataFrame:
        """One row per variant, columns ``SUMMARY_COLUMNS``."""
        rows = [v.summary for v in self.variants]
        frame: pd.DataFrame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
        return frame

    def per_site_frame(self) -> pd.DataFrame:
        """Final scan rows of every variant: a ``variant`` column, then the scan's columns."""
        frames = [v.report.to_frame().assign(variant=v.name) for v in self.variants]
        frame: pd.DataFrame = pd.concat(frames, ignore_index=True)[["variant", *COLUMNS]]
        return frame

    def __repr__(self) -> str:
        names = ", ".join(v.name for v in self.variants)
        return (
            f"<Comparison of {len(self.variants)} variants ({names}): seed {self.seed}, "
            f"{self.epochs} epochs, {self.wall_time_s:.1f} s>"
        )

    def _repr_html_(self) -> str:
        """Jupyter: the settings line and the summary table."""
        from neurodiag.compare.render import comparison_fragment

        return comparison_fragment(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None): variants with history, sites and summary, plus settings."""
        return {
            "variants": [v.to_dict() for v in self.variants],
            "seed": self.seed,
            "epochs": self.epochs,
            "settings": _jsonable(self.settings),
            "wall_time_s": self.wall_time_s,
        }


def _isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _nanmin(values: Any) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return min(finite) if finite else math.nan


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)
