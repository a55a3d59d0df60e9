"""PNG figures of a comparison or a scan (the paper's figures, for the user's own model).

matplotlib is optional (``pip install 'neurodiag[plot]'``) and imported only when a plot is
asked for. Figures are drawn on a ``Figure`` with the Agg canvas directly, so the caller's
pyplot backend and global state are never touched. Plots read only the Report rows and the
comparison history: nothing is measured here.

Log axes cannot show 0, so zeros (no dead neuron, a MAG of exactly 0) are drawn on a floor one
decade below the smallest positive value of the panel (at most 0.1 for dead %), marked by a
dotted line and named in the axis label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurodiag.errors import NeurodiagError
from neurodiag.report.model import Report

# dead % is a multiple of 100/neurons, so 0.1 % is below any real value up to 1000 neurons
DEAD_FLOOR = 0.1

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from neurodiag.compare.summary import Comparison


def plot_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Three panels: dead % by depth, first-site MAG by epoch, min |σ'| by depth (with δ̄)."""
    figure = _figure(3)
    dead_ax, mag_ax, deriv_ax = figure.axes
    colors = _colors(len(comparison.variants))
    dead = [[float(r["dead_pct"]) for r in v.sites] for v in comparison.variants]
    mags = [[float(h["first_site_mag"]) for h in v.history] for v in comparison.variants]
    derivs = [[float(r["min_abs_deriv"]) for r in v.sites] for v in comparison.variants]
    dead_floor, mag_floor, deriv_floor = _floor(dead, DEAD_FLOOR), _floor(mags), _floor(derivs)
    for variant, color, d, m, s in zip(
        comparison.variants, colors, dead, mags, derivs, strict=True
    ):
        epochs = [h["epoch"] for h in variant.history]
        dead_ax.plot(range(len(d)), _lift(d, dead_floor), color=color, label=variant.name)
        mag_ax.plot(epochs, _lift(m, mag_floor), "o-", color=color, label=variant.name)
        deriv_ax.plot(range(len(s)), _lift(s, deriv_floor), color=color, label=variant.name)
        bars = [float(r["delta_bar"]) for r in variant.sites]
        if any(not math.isnan(b) for b in bars):
            deriv_ax.plot(range(len(bars)), bars, "--", color=color, label=f"{variant.name} δ̄")
    _axes(dead_ax, "dead neurons by depth", "site index", "dead %", dead_floor)
    _axes(mag_ax, "MAG of the first site", "epoch", "mean |∂L/∂a|", mag_floor)
    mag_ax.xaxis.set_major_locator(_integer_ticks())
    _axes(deriv_ax, "min |σ'| by depth", "site index", "min |σ'(z)|", deriv_floor)
    figure.suptitle(f"neurodiag compare (seed {comparison.seed}, {comparison.epochs} epochs)")
    return _save(figure, path)


def plot_scan(report: Report, path: str | Path) -> Path:
    """Two panels of one scan: dead % by depth and MAG by depth."""
    figure = _figure(2)
    dead_ax, mag_ax = figure.axes
    dead = [float(r["dead_pct"]) for r in report.rows]
    mags = [float(r["mag"]) for r in report.rows]
    dead_floor, mag_floor = _floor([dead], DEAD_FLOOR), _floor([mags])
    dead_ax.plot(range(len(dead)), _lift(dead, dead_floor), "o-", markersize=3)
    mag_ax.plot(range(len(mags)), _lift(mags, mag_floor), "o-", markersize=3)
    _axes(dead_ax, "dead neurons by depth", "site index", "dead %", dead_floor, legend=False)
    _axes(mag_ax, "MAG by depth", "site index", "mean |∂L/∂a|", mag_floor, legend=False)
    figure.suptitle(f"neurodiag scan of {report.header.model} ({report.header.dead_window} window)")
    return _save(figure, path)


def _figure(panels: int) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise NeurodiagError("install matplotlib: pip install 'neurodiag[plot]'") from None
    figure = Figure(figsize=(5.0 * panels, 4.2), layout="constrained")
    figure.subplots(1, panels)
    return figure


def check_plot_path(path: str | Path) -> None:
    """Refuse a plot file whose format matplotlib cannot write, before any work is done."""
    suffix = Path(path).suffix.lower().lstrip(".")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        raise NeurodiagError("install matplotlib: pip install 'neurodiag[plot]'") from None
    supported = FigureCanvasAgg.get_supported_filetypes()
    if suffix not in supported:
        raise NeurodiagError(
            f"--plot {path}: cannot write a '.{suffix}' plot; use one of "
            f"{', '.join('.' + s for s in sorted(supported))} (e.g. scan.png)"
        )


def _save(figure: Figure, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    target = Path(path)
    check_plot_path(target)
    FigureCanvasAgg(figure)
    try:
        figure.savefig(target, dpi=120)
    except OSError as exc:
        raise NeurodiagError(f"cannot write the plot to {target}: {exc.strerror or exc}") from exc
    return target


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(count)]


def _floor(series: Sequence[Sequence[float]], cap: float = math.inf) -> float:
    """One decade below the smallest positive finite value, at most ``cap`` (1e-12 if none)."""
    positive = [v for values in series for v in values if math.isfinite(v) and v > 0]
    return min(min(positive) / 10, cap) if positive else min(1e-12, cap)


def _lift(values: Sequence[float], floor: float) -> list[float]:
    return [max(v, floor) if math.isfinite(v) else math.nan for v in values]


def _axes(
    ax: Axes, title: str, xlabel: str, ylabel: str, floor: float, *, legend: bool = True
) -> None:
    ax.set_yscale("log")
    ax.axhline(floor, color="0.6", linestyle=":", linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel} (0 drawn at {floor:.2g})")
    if legend:
        ax.legend(fontsize="small")


__all__ = ["plot_comparison", "plot_scan"]
