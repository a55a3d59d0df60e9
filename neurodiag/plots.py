"""PNG figures of a comparison or a scan (the paper's figures, for the user's own model).

matplotlib is optional (``pip install 'neurodiag[plot]'``) and imported only when a plot is
asked for. Figures are drawn on a ``Figure`` with the Agg canvas directly, so the caller's
pyplot backend and global state are never touched. Plots read only the Report rows and the
comparison history: nothing is measured here.

Log axes cannot show 0: in a scan's figure zeros are drawn on a floor one decade below the
smallest positive value of the panel (at most 0.1 for dead %); a comparison's figures use the
fixed ``FLOORS``. The floor is a dotted line named in the axis label, and the variants lying
on it are listed in the panel, so coinciding variants (all at 0 % dead) are still told apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurodiag.atomic import replacing
from neurodiag.compare.render import COMPARE_FIGURES
from neurodiag.errors import NeurodiagError
from neurodiag.report.model import Report
from neurodiag.report.render_html import FIGURES

# dead % is a multiple of 100/neurons, so 0.1 % is below any real value up to 1000 neurons
DEAD_FLOOR = 0.1

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from neurodiag.compare.summary import Comparison


#: Fixed floors of the comparison figures (log axes cannot show 0): values below are drawn on
#: the floor, and the axis label says so. Dead % is a multiple of 100/neurons, so 0.01 % is below
#: any real value up to 10,000 neurons; σ' below 1e-6 (zeros, SELU's ~1e-40 far left) carries no
#: gradient worth telling apart; a MAG below 1e-12 is float noise.
FLOORS: dict[str, float] = {"dead_pct": 0.01, "min_abs_deriv": 1e-6, "mag": 1e-12}
#: Markers cycled over variants, so variants that coincide (every one at 0 % dead) stay visible.
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*")


@dataclass(frozen=True)
class Series:
    label: str
    x: list[float]
    y: list[float]
    dashed: bool = False  # δ̄ lines


@dataclass(frozen=True)
class Panel:
    """One panel of the comparison figure: what is drawn, nothing measured."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    floor: float | None = None  # log axis: values below are drawn here (stated in the label)
    at_floor: tuple[str, ...] = ()  # variants with every value on the floor
    log: bool = False  # a log axis without a floor (positive values such as a loss)

    def lifted(self, values: Sequence[float]) -> list[float]:
        if self.floor is None:
            return [v if math.isfinite(v) else math.nan for v in values]
        return _lift(values, self.floor)


def comparison_panels(comparison: Comparison | Mapping[str, Any]) -> list[Panel]:
    """The paper's five figures for the user's run, as eight panels.

    Fig. 1: min |σ'| by epoch at the first, middle and last site, with δ̄; Fig. 2: min |σ'| by
    depth after the last epoch, with δ̄; Fig. 3: dead % by depth over the last epoch's training
    batches (the post-epoch scan without training); Fig. 4: the first site's MAG by epoch;
    Fig. 5: loss (log scale) and held-out accuracy by epoch. ``comparison`` may be the JSON
    document (``Comparison.to_dict()``, as ``compare --format json`` writes it): figures read
    nothing that document does not hold, so a saved run can be drawn again.
    """
    doc = comparison.to_dict() if hasattr(comparison, "to_dict") else comparison
    variants: list[Mapping[str, Any]] = list(doc["variants"])
    panels: list[Panel] = []
    depth = max((len(v["sites"]) for v in variants), default=0)
    picks = sorted({0, (depth - 1) // 2, depth - 1}) if depth else []
    for name, index in zip(("first", "middle", "last"), picks, strict=False):
        series: list[Series] = []
        for v in variants:
            epochs = _column(v["history"], "epoch")
            ys = [_at(h.get("site_min_abs_deriv") or [], index) for h in v["history"]]
            series.append(Series(v["name"], epochs, ys))
            bar = _at(_column(v["sites"], "delta_bar"), index)
            if math.isfinite(bar):
                series.append(Series(f"{v['name']} δ̄", [epochs[0], epochs[-1]], [bar, bar], True))
        panels.append(
            _log_panel(
                f"Fig. 1 min |σ'| by epoch, {name} site (#{index})",
                "epoch",
                "min |σ'(z)|",
                series,
                "min_abs_deriv",
            )
        )
    deriv: list[Series] = []
    for v in variants:
        sites = v["sites"]
        deriv.append(Series(v["name"], _depths(sites), _column(sites, "min_abs_deriv")))
        bars = _column(sites, "delta_bar")
        if any(math.isfinite(b) for b in bars):
            deriv.append(Series(f"{v['name']} δ̄", _depths(sites), bars, True))
    panels.append(
        _log_panel(
            "Fig. 2 min |σ'| by depth, last epoch",
            "site index",
            "min |σ'(z)|",
            deriv,
            "min_abs_deriv",
        )
    )
    trained = any(v.get("train_window_sites") for v in variants)
    dead = [
        Series(v["name"], _depths(rows), _column(rows, "dead_pct"))
        for v in variants
        for rows in [v.get("train_window_sites") or v["sites"]]
    ]
    window = "last epoch's training batches" if trained else "scan"
    panels.append(
        _log_panel(f"Fig. 3 dead % by depth ({window})", "site index", "dead %", dead, "dead_pct")
    )
    mags = [
        Series(v["name"], _column(v["history"], "epoch"), _column(v["history"], "first_site_mag"))
        for v in variants
    ]
    panels.append(
        _log_panel("Fig. 4 MAG of the first site by epoch", "epoch", "mean |∂L/∂a|", mags, "mag")
    )
    for key, title, log in (
        ("loss", "Fig. 5 training loss", True),
        ("accuracy", "Fig. 5 held-out accuracy", False),
    ):
        series = [
            Series(v["name"], _column(v["history"], "epoch"), _column(v["history"], key))
            for v in variants
        ]
        panels.append(Panel(f"{title} by epoch", "epoch", key, series, log=log))
    return panels


@dataclass(frozen=True)
class BarPanel:
    """Grouped bars: one group per variant, one bar per criterion (``criteria_panel``)."""

    title: str
    ylabel: str
    groups: tuple[str, ...]  # variant names, left to right
    bars: tuple[tuple[str, tuple[float, ...]], ...]  # (criterion label, value per variant)
    marked: tuple[str, ...] = ()  # variants with the bounded criteria at 0 by construction
    note: str = ""


#: The criteria drawn side by side: (summary key, legend label); the max over the sites.
CRITERIA_BARS: tuple[tuple[str, str], ...] = (
    ("max_dead_pct", "dead |σ'| ≤ ε (scan)"),
    ("train_max_dead_pct", "dead, per batch (last epoch's training batches)"),
    ("max_zero_output_pct", "zero-output a = 0 (scan)"),
    ("max_dormant_pct", "τ-dormant (scan)"),
)


def criteria_panel(comparison: Comparison | Mapping[str, Any]) -> BarPanel:
    """The dead criteria side by side per variant: max over the sites of dead % (scan), the
    per-batch dead % of the last epoch's training batches, zero-output % and τ-dormant %.

    Variants whose dead, per-batch dead and zero-output are 0 by construction (the JSON's
    ``criteria``) are marked; a value not measured (no training window) is NaN, no bar.
    """
    doc = comparison.to_dict() if hasattr(comparison, "to_dict") else comparison
    variants: list[Mapping[str, Any]] = list(doc["variants"])
    names = tuple(str(v["name"]) for v in variants)
    bars = tuple(
        (label, tuple(_column([v["summary"] for v in variants], key)))
        for key, label in CRITERIA_BARS
    )
    criteria: Mapping[str, Any] = doc.get("criteria") or {}
    zero = (criteria.get("dead") or {}).get("zero_by_construction") or {}
    marked = tuple(name for name in names if name in zero)
    note = "* 0 by construction for dead, per-batch dead and zero-output (|σ'| > ε everywhere)"
    return BarPanel(
        "Dead criteria side by side (max over the sites)",
        "% of neurons",
        names,
        bars,
        marked,
        note if marked else "",
    )


def plot_comparison(comparison: Comparison | Mapping[str, Any], path: str | Path) -> Path:
    """The paper's five figures (``comparison_panels``) in one PNG of eight panels, and below
    them the dead criteria side by side per variant (``criteria_panel``, grouped bars).

    One legend for all line panels, outside them (δ̄ lines are dashed in their variant's
    colour); colours and markers cycle independently, so twenty variants still differ. The
    bars have one colour and hatch per criterion and their own legend; exact zeros show as a
    short tick, and variants at 0 by construction are starred.
    """
    return _save(_comparison_figure(comparison), path)


def comparison_png(comparison: Comparison | Mapping[str, Any]) -> bytes:
    """The figure of :func:`plot_comparison` as PNG bytes (for the HTML report)."""
    return _png(_comparison_figure(comparison))


def _comparison_figure(comparison: Comparison | Mapping[str, Any]) -> Figure:
    doc = comparison.to_dict() if hasattr(comparison, "to_dict") else comparison
    panels = comparison_panels(doc)
    figure = _figure(4, rows=2, extra_row=True)
    bar_ax = figure.axes[-1]
    _draw_bars(bar_ax, criteria_panel(doc))
    names = [str(v["name"]) for v in doc["variants"]]
    colors = dict(zip(names, _colors(len(names)), strict=True))
    handles: dict[str, Any] = {}
    for ax, panel in zip(figure.axes[:-1], panels, strict=False):
        for series in panel.series:
            base = series.label.removesuffix(" δ̄")
            i = names.index(base)
            ys = panel.lifted(series.y)
            if series.dashed:
                ax.plot(series.x, ys, "--", color=colors[base], linewidth=1)
                continue
            n = max(len(series.x), 1)
            step = max(1, min(n, len(names)))
            (line,) = ax.plot(
                series.x,
                ys,
                "-",
                marker=MARKERS[i % len(MARKERS)],
                markevery=(i % step, step),
                markersize=5,
                color=colors[base],
                alpha=0.85,
            )
            handles.setdefault(base, line)
        _decorate(ax, panel)
    for ax in figure.axes[len(panels) : -1]:
        ax.set_visible(False)
    figure.legend(
        list(handles.values()),
        list(handles),
        loc="outside right upper",
        fontsize="small",
        title="variant (dashed: δ̄)",
    )
    figure.suptitle(f"neurodiag compare (seed {doc['seed']}, {doc['epochs']} epochs)")
    return figure


def _log_panel(title: str, xlabel: str, ylabel: str, series: list[Series], metric: str) -> Panel:
    floor = FLOORS[metric]
    at_floor = tuple(
        s.label
        for s in series
        if not s.dashed and s.y and all(math.isfinite(v) and v <= floor for v in s.y)
    )
    return Panel(title, xlabel, ylabel, series, floor, at_floor)


def _decorate(ax: Axes, panel: Panel) -> None:
    ax.set_title(panel.title, fontsize="medium")
    ax.set_xlabel(panel.xlabel)
    if panel.xlabel == "epoch":
        ax.xaxis.set_major_locator(_integer_ticks())
    if panel.floor is None:
        ax.set_ylabel(panel.ylabel)
        if panel.log and any(math.isfinite(v) and v > 0 for s in panel.series for v in s.y):
            ax.set_yscale("log")
        if not any(math.isfinite(v) for s in panel.series for v in s.y):
            ax.text(0.5, 0.5, f"no {panel.ylabel} recorded", ha="center", transform=ax.transAxes)
            ax.set_yticks([])
        return
    ax.set_yscale("log")
    ax.axhline(panel.floor, color="0.6", linestyle=":", linewidth=1)
    ax.set_ylabel(f"{panel.ylabel} (≤ {panel.floor:.0e} drawn at {panel.floor:.0e})")
    highs = [v for s in panel.series for v in s.y if math.isfinite(v) and v > panel.floor]
    ax.set_ylim(panel.floor / 2, max(highs, default=panel.floor * 10) * 2)
    if panel.at_floor:
        shown = ", ".join(panel.at_floor[:3])
        more = len(panel.at_floor) - 3
        note = ax.text(
            0.01,
            0.02,
            f"at the floor: {shown}" + (f" +{more} more" if more > 0 else ""),
            transform=ax.transAxes,
            fontsize="x-small",
            color="0.3",
        )
        note.set_in_layout(False)  # a long list must not squeeze the panel


def _at(values: Sequence[float], index: int) -> float:
    return float(values[index]) if 0 <= index < len(values) else math.nan


def _depths(rows: Sequence[Any]) -> list[float]:
    return [float(i) for i in range(len(rows))]


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """``key`` of every row as floats; None (JSON's NaN) and missing keys are NaN."""
    return [math.nan if row.get(key) is None else float(row[key]) for row in rows]


def plot_scan(report: Report, path: str | Path) -> Path:
    """Two panels of one scan: dead % by depth and MAG by depth."""
    return _save(_scan_figure(report), path)


def scan_png(report: Report) -> bytes:
    """The figure of :func:`plot_scan` as PNG bytes (for the HTML report)."""
    return _png(_scan_figure(report))


FIGURES.register("dead % and MAG by depth", scan_png)
COMPARE_FIGURES.register("the paper's five figures", comparison_png)


def _png(figure: Figure) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _scan_figure(report: Report) -> Figure:
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
    return figure


def _figure(panels: int, rows: int = 1, *, extra_row: bool = False) -> Figure:
    """``rows`` × ``panels`` axes; ``extra_row``: then one more axis spanning the width (last)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise NeurodiagError("install matplotlib: pip install 'neurodiag[plot]'") from None
    height = 4.2 * rows + (4.6 if extra_row else 0.0)
    figure = Figure(
        figsize=(5.0 * panels + (3.0 if rows > 1 else 0.0), height), layout="constrained"
    )
    if not extra_row:
        figure.subplots(rows, panels)
        return figure
    grid = figure.add_gridspec(rows + 1, panels, height_ratios=[1.0] * rows + [1.1])
    for r in range(rows):
        for c in range(panels):
            figure.add_subplot(grid[r, c])
    figure.add_subplot(grid[rows, :])
    return figure


#: Hatches of the criteria bars (with their colours, so the groups read in grey print too).
HATCHES = ("", "//", "..", "xx", "\\\\", "oo")


def _draw_bars(ax: Axes, panel: BarPanel) -> None:
    """Grouped bars, one group per variant; exact zeros get a short tick so they show."""
    from matplotlib import colormaps

    count = max(len(panel.bars), 1)
    width = 0.8 / count
    cmap = colormaps["Set2"]
    top = max((v for _, values in panel.bars for v in values if math.isfinite(v)), default=0.0)
    for j, (label, values) in enumerate(panel.bars):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(panel.groups))]
        color = cmap(j % cmap.N)
        heights = [v if math.isfinite(v) else 0.0 for v in values]
        ax.bar(
            xs,
            heights,
            width * 0.92,
            color=color,
            hatch=HATCHES[j % len(HATCHES)],
            edgecolor="0.25",
            linewidth=0.6,
            label=label,
        )
        zeros = [x for x, v in zip(xs, values, strict=True) if v == 0]
        ax.plot(zeros, [0.0] * len(zeros), "_", color="0.25", markersize=max(3.0, 40 * width))
        missing = [x for x, v in zip(xs, values, strict=True) if not math.isfinite(v)]
        for x in missing:
            ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize="xx-small", rotation=90)
    labels = [f"{name} *" if name in panel.marked else name for name in panel.groups]
    ax.set_xticks(range(len(panel.groups)), labels, rotation=30 if len(labels) > 6 else 0)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right" if len(labels) > 6 else "center")
    ax.set_xlim(-0.6, len(panel.groups) - 0.4)
    ax.set_ylim(0, max(top * 1.15, 1.0))
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title + (f"; {panel.note}" if panel.note else ""), fontsize="medium")
    ax.grid(axis="y", color="0.9")
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small", title="criterion")


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
        with replacing(target) as handle:
            figure.savefig(handle, format=target.suffix.lower().lstrip("."), dpi=120)
    except OSError as exc:
        raise NeurodiagError(f"cannot write the plot to {target}: {exc.strerror or exc}") from exc
    return target


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if count > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(count)]


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


__all__ = [
    "FLOORS",
    "BarPanel",
    "Panel",
    "Series",
    "comparison_panels",
    "criteria_panel",
    "plot_comparison",
    "plot_scan",
]
