"""One window of training steps as a Monitor measured it, and the tidy views of a history.

A window is a run of consecutive training steps (``every`` N steps, an epoch in the callbacks,
or whatever the loop closes with ``end_window``); its statistics describe those steps alone, so
a unit that stops firing in epoch 3 shows as dead in epoch 3 even though it fired in epoch 1.
Steps are counted from 0: a window holds steps ``step_start`` .. ``step_end - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from neurodiag.report.cells import is_missing
from neurodiag.report.model import COLUMNS, Report

if TYPE_CHECKING:
    from neurodiag.monitor.alerts import Alert

#: ``steps``: every N steps; ``epoch``: one epoch (the callbacks); ``manual``: ``end_window()``.
WindowKind = Literal["steps", "epoch", "manual"]

#: Columns in front of a history frame's report columns, in this order.
WINDOW_COLUMNS: tuple[str, ...] = (
    "window",
    "window_kind",
    "epoch",
    "step_start",
    "step_end",
    "samples",
    "batches",
)

#: Per-site values the logger adapters write by default (one scalar per site each).
SITE_METRICS: tuple[str, ...] = (
    "dead_pct",
    "dormant_pct",
    "grad_dormant_pct",
    "mag",
    "min_abs_deriv",
    "nonfinite",
)


def describe_window(kind: str, start: int, end: int, epoch: int | None, every: int | None) -> str:
    """The header line of a window report: ``epoch 2 · steps 40-59``."""
    steps = f"steps {start}–{end - 1}" if end - start > 1 else f"step {start}"
    if kind == "epoch":
        label = f"epoch {epoch}" if epoch is not None else "epoch"
    elif kind == "steps" and every is not None:
        label = f"every {every} steps" + (f" · epoch {epoch}" if epoch is not None else "")
    elif kind == "cumulative":
        label = "cumulative (every step since the start)"
    else:
        label = "window" + (f" · epoch {epoch}" if epoch is not None else "")
    return f"{label} · {steps}"


@dataclass(frozen=True)
class Window:
    """The statistics of one window; ``cumulative`` (with ``track_cumulative``) covers every
    step from the start to ``step_end``. ``samples`` and ``batches`` count measured steps only."""

    index: int
    kind: WindowKind
    step_start: int
    step_end: int
    epoch: int | None
    samples: int
    batches: int
    report: Report
    cumulative: Report | None = None
    alerts: tuple[Alert, ...] = field(default=())
    #: ``Monitor(update_ratio=True)``: each layer's ‖W_end − W_start‖ / ‖W_start‖ over the window
    update_ratios: dict[str, float] = field(default_factory=dict)
    #: the layers of ``update_ratios`` frozen (``requires_grad=False``) at the window's start
    frozen_layers: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> dict[str, Any]:
        """Whole-model figures: mean/max dead %, the first site's MAG, min |σ'|, NaN/Inf."""
        return summarize_rows(self.report.rows)

    def facts(self) -> dict[str, Any]:
        """The window's own columns of a history frame."""
        return {
            "window": self.index,
            "window_kind": self.kind,
            "epoch": self.epoch,
            "step_start": self.step_start,
            "step_end": self.step_end,
            "samples": self.samples,
            "batches": self.batches,
        }

    def without_neurons(self) -> Window:
        """The same window without per-neuron tensors (what a long history keeps)."""
        cumulative = self.cumulative
        if cumulative is not None:
            cumulative = replace(cumulative, neurons={})
        return replace(self, report=replace(self.report, neurons={}), cumulative=cumulative)


def summarize_rows(rows: Sequence[dict[str, Any]], *, criteria: bool = False) -> dict[str, Any]:
    """Whole-model figures of report rows (also ``compare``'s): missing values are skipped.

    ``criteria`` adds the mean/max over sites of the other dead criteria (``compare``'s
    summary): ``mean_zero_output_pct``/``max_zero_output_pct`` and
    ``mean_dormant_pct``/``max_dormant_pct``; a Monitor's window summary leaves them out.
    """
    mean_dead, max_dead = _mean_max(rows, "dead_pct")
    mins = [float(r["min_abs_deriv"]) for r in rows if not is_missing(r["min_abs_deriv"])]
    summary = {
        "mean_dead_pct": mean_dead,
        "max_dead_pct": max_dead,
        "first_site_mag": float(rows[0]["mag"])
        if rows and not is_missing(rows[0]["mag"])
        else math.nan,
        "min_abs_deriv": min(mins) if mins else math.nan,
        "nonfinite": sum(int(r["nonfinite"]) for r in rows),
    }
    if criteria:
        for column in CRITERIA_COLUMNS:
            mean, high = _mean_max(rows, column)
            stem = column.removesuffix("_pct")
            summary[f"mean_{stem}_pct"] = mean
            summary[f"max_{stem}_pct"] = high
    return summary


#: Per-site columns that ``summarize_rows(criteria=True)`` also summarises (mean/max over sites).
CRITERIA_COLUMNS: tuple[str, ...] = ("zero_output_pct", "dormant_pct")


def _mean_max(rows: Sequence[dict[str, Any]], column: str) -> tuple[float, float]:
    """Mean and max of ``column`` over the rows that have it (NaN, NaN when none does)."""
    values = [float(r[column]) for r in rows if not is_missing(r.get(column))]
    if not values:
        return math.nan, math.nan
    return sum(values) / len(values), max(values)


def history_frame(windows: Iterable[Window], *, cumulative: bool = False) -> pd.DataFrame:
    """One row per (window, site): the window's columns, then every report column."""
    frames = []
    for window in windows:
        report = window.cumulative if cumulative else window.report
        if report is None:
            raise ValueError(
                "no cumulative reports kept: create the Monitor with track_cumulative=True"
            )
        frame = report.to_frame()
        for position, (name, value) in enumerate(window.facts().items()):
            frame.insert(position, name, value)
        frames.append(frame)
    columns = [*WINDOW_COLUMNS, *COLUMNS]
    history: pd.DataFrame = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    )
    typed: pd.DataFrame = history[columns].astype({"epoch": "Int64", "window_kind": "string"})
    return typed


#: Columns of an update-ratio frame, in this order.
UPDATE_COLUMNS: tuple[str, ...] = (
    "window",
    "step_start",
    "step_end",
    "epoch",
    "layer",
    "update_ratio",
    "frozen",
)


def update_frame(windows: Iterable[Window]) -> pd.DataFrame:
    """One row per (window, layer) of the windows' update ratios."""
    rows = [
        (w.index, w.step_start, w.step_end, w.epoch, layer, ratio, layer in w.frozen_layers)
        for w in windows
        for layer, ratio in w.update_ratios.items()
    ]
    frame = pd.DataFrame(rows, columns=list(UPDATE_COLUMNS))
    typed: pd.DataFrame = frame.astype(
        {"epoch": "Int64", "update_ratio": "float64", "frozen": "bool"}
    )
    return typed


def window_scalars(
    window: Window,
    *,
    prefix: str = "neurodiag",
    per_site: bool = True,
    metrics: Sequence[str] = SITE_METRICS,
) -> dict[str, float]:
    """Flat ``{"neurodiag/max_dead_pct": ..., "neurodiag/<site>/dead_pct": ...}`` for a logger;
    missing values (no gradient reached a site) are left out rather than logged as NaN. With
    update ratios: ``<prefix>/min_update_ratio``/``max_update_ratio`` over the trainable layers
    and, ``per_site``, ``<prefix>/update_ratio/<layer>`` for every layer."""
    scalars = {
        f"{prefix}/{name}": float(value)
        for name, value in window.summary.items()
        if not is_missing(value)
    }
    if per_site:
        for row in window.report.rows:
            for metric in metrics:
                value: Any = row.get(metric)
                if not is_missing(value):
                    scalars[f"{prefix}/{row['site']}/{metric}"] = float(value)
    ratios = window.update_ratios
    if per_site:
        for layer, ratio in ratios.items():
            if not math.isnan(ratio):
                scalars[f"{prefix}/update_ratio/{layer}"] = ratio
    trained = [r for name, r in ratios.items() if name not in window.frozen_layers]
    trained = [r for r in trained if not math.isnan(r)]
    if trained:  # trainable layers only: a frozen one reads 0 by construction
        scalars[f"{prefix}/min_update_ratio"] = min(trained)
        scalars[f"{prefix}/max_update_ratio"] = max(trained)
    return scalars


__all__ = [
    "SITE_METRICS",
    "UPDATE_COLUMNS",
    "WINDOW_COLUMNS",
    "Window",
    "WindowKind",
    "describe_window",
    "history_frame",
    "summarize_rows",
    "update_frame",
    "window_scalars",
]
