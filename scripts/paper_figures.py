"""The paper's figures from the saved runs of ``reproduce_paper.py``: mean over seeds, min–max band.

Drawn from the gzipped ``neurodiag compare`` JSON only (nothing is measured here), on an Agg
canvas, one PNG per figure:

* ``fig1_min_deriv_by_epoch.png``: min |σ'| at layers 1, 25 and 50 after each epoch (paper Fig. 1);
* ``fig2_min_deriv_by_depth.png``: min |σ'| per layer after the last epoch (Fig. 2);
* ``fig3_dead_by_layer.png``: dead % per layer, per-batch window over the last epoch's training
  steps, in the paper's three panels (Fig. 3); ``fig3b_bn_controls.png``: the same for each
  activation with and without the BatchNorm in front;
* ``fig4_mag_by_epoch.png``: MAG of the first layer over each epoch's training steps (Fig. 4);
* ``fig5_mnist.png`` (MNIST only): MAG of the first layer, dead % per layer for the
  non-Bernstein and the Bernstein activations apart (Fig. 5);
* ``sweep.png`` for the lr sweep: worst-layer dead % and accuracy against lr.

δ̄ lines are dashed, in their variant's colour, and labelled with their value. Every variant keeps
one colour, marker and line style in every figure.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neurodiag.atomic import replacing

LABELS = {"baseline": "ReLU", "relu:res": "ReLU_res", "selu:init=lecun": "SELU",
          "selu:init=lecun:bn": "SELU_BN"}  # fmt: skip
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#d62728", "#e377c2", "#8c564b", "#17becf", "#bcbd22", "#7f7f7f",
    "#393b79", "#e6550d", "#843c39", "#636363",
]  # fmt: skip
_GREENS = ["#00441b", "#1b7837", "#5aae61", "#a6dba0"]
_PURPLES = ["#40004b", "#762a83", "#9970ab", "#c2a5cf"]
_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "*"]
DEAD_LINTHRESH = 1.0  # symlog: linear below 1 %, so 0 % is drawn and the rest reads as a log


def label(name: str) -> str:
    """The paper's names: ReLU_res, SELU_BN, Bern_{9,0.01}[-5,5], Bern_{9,0.005} (auto range)."""
    if name in LABELS:
        return LABELS[name]
    if not name.startswith("bern"):
        return name
    parts = name.split(":")
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    delta = options.get("delta", "0.01")
    rng = "" if options.get("range") == "auto" else "[−5,5]"
    return f"Bern{parts[0][4:]},{delta}{rng}"


class Styles:
    """One colour, marker and line style per variant name, fixed for all figures of a run:
    the ReLU family and the other baselines in solid lines from one palette, BN controls
    dotted, Bernstein variants dashed in shades of their own (degree 9 greens, 15 purples)."""

    def __init__(self, names: Sequence[str]) -> None:
        plain = [n for n in names if not n.startswith("bern")]
        self.color = {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(plain)}
        for degree, shades in (("9", _GREENS), ("15", _PURPLES)):
            family = [n for n in names if n.startswith(f"bern{degree}:")]
            self.color.update({n: shades[i % len(shades)] for i, n in enumerate(family)})
        self.index = {name: i for i, name in enumerate(names)}

    def __call__(self, name: str) -> dict[str, Any]:
        i = self.index.get(name, len(self.index))
        dashed = name.startswith("bern")
        dotted = name.endswith(":bn") and not dashed
        return {
            "color": self.color.get(name, "black"),
            "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": "--" if dashed else (":" if dotted else "-"),
            "markersize": 3.5,
            "linewidth": 1.3,
        }


def _variant(run: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in run["variants"] if v["name"] == name), None)


def _series(
    runs: Sequence[dict[str, Any]], name: str, read: Callable[[dict[str, Any]], list[float]]
):
    """Per x: (mean, min, max) over the runs where the variant exists; None if none."""
    columns = [read(v) for run in runs if (v := _variant(run, name)) is not None]
    if not columns:
        return None
    length = min(len(c) for c in columns)
    mean, low, high = [], [], []
    for i in range(length):
        values = [c[i] for c in columns if c[i] is not None and math.isfinite(c[i])]
        mean.append(sum(values) / len(values) if values else math.nan)
        low.append(min(values) if values else math.nan)
        high.append(max(values) if values else math.nan)
    return mean, low, high


def _num(value: Any) -> float:
    return math.nan if value is None or isinstance(value, bool) else float(value)


def _figure(panels: int, width: float = 5.2, height: float = 4.0) -> tuple[Figure, list[Any]]:
    figure = Figure(figsize=(width * panels + 2.6, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, panels, i + 1) for i in range(panels)]
    return figure, axes


def _plot(ax: Any, runs: Sequence[dict[str, Any]], names: Sequence[str], styles: Styles,
          read: Callable[[dict[str, Any]], list[float]], start: int = 1,
          floor: float | None = None) -> list[str]:  # fmt: skip
    """Draw each variant's mean and band; returns the variants at exactly 0 everywhere."""
    zeros: list[str] = []
    for name in names:
        series = _series(runs, name, read)
        if series is None:
            continue
        mean, low, high = series
        if mean and all(v == 0 for v in high):
            zeros.append(name)
        if floor is not None:
            mean, low, high = ([max(v, floor) for v in s] for s in (mean, low, high))
        x = list(range(start, start + len(mean)))
        style = styles(name)
        ax.plot(x, mean, label=label(name), **style)
        if len(runs) > 1:
            ax.fill_between(x, low, high, color=style["color"], alpha=0.12, linewidth=0)
    return zeros


def _zero_note(
    ax: Any, zeros: Sequence[str], what: str = "at 0 % in every layer, every seed", y: float = 0.55
) -> None:
    """Lines at 0 lie on each other: name them in the panel."""
    if zeros:
        names = textwrap.fill(", ".join(label(z) for z in zeros), width=48)
        text = f"{what}:\n{names}"
        ax.text(0.3, y, text, transform=ax.transAxes, fontsize=6, va="top",
                bbox={"facecolor": "white", "alpha": 0.85, "linewidth": 0})  # fmt: skip


def _delta_bars(
    ax: Any, runs: Sequence[dict[str, Any]], names: Sequence[str], styles: Styles
) -> None:
    """One dashed line per Bernstein variant at its δ̄, labelled with the value at the right."""
    seen: dict[float, list[str]] = {}
    for name in names:
        v = _variant(runs[0], name)
        if v is None:
            continue
        bar = _num(v["summary"].get("delta_bar"))
        if math.isfinite(bar):
            seen.setdefault(round(bar, 12), []).append(name)
    for bar, owners in seen.items():
        ax.axhline(bar, color=styles(owners[0])["color"], linestyle=(0, (4, 3)), linewidth=0.9)
        ax.annotate(f"δ̄={bar:.3g} ({', '.join(label(o) for o in owners)})", (1.0, bar),
                    xycoords=("axes fraction", "data"), xytext=(3, 0), textcoords="offset points",
                    fontsize=6.5, va="center", ha="left", color=styles(owners[0])["color"],
                    annotation_clip=False)  # fmt: skip


def _legend(figure: Figure, axes: Sequence[Any]) -> None:
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    figure.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=7,
                  frameon=False)  # fmt: skip


def _save(figure: Figure, path: Path) -> None:
    with replacing(path) as sink:  # atomic: temp file, fsync, rename
        figure.savefig(sink, format="png", dpi=110)


def _sites(key: str, table: str = "train_window_sites") -> Callable[[dict[str, Any]], list[float]]:
    return lambda v: [_num(r.get(key)) for r in (v.get(table) or [])]


def _history(key: str) -> Callable[[dict[str, Any]], list[float]]:
    return lambda v: [_num(h.get(key)) for h in v["history"]]


def _names(runs: Sequence[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in runs[0]["variants"]]


def _panels(names: Sequence[str], base: list[str]) -> list[tuple[str, list[str]]]:
    """The paper's Fig. 3/4 panels: the baselines against three Bernstein subsets."""
    bern = [n for n in names if n.startswith("bern")]

    def pick(degree: int) -> list[str]:
        return [n for n in bern if n.startswith(f"bern{degree}:") and "range=auto" in n] + [
            f"bern{degree}:bn"
        ]

    return [
        ("vs Bern₉,₀.₀₁[−5,5], Bern₁₅,₀.₀₁[−5,5]", [*base, "bern9:bn", "bern15:bn"]),
        ("vs Bern₉ (δ = 0.005, 0.01, 0.05; auto range) and [−5,5]", base + pick(9)),
        ("vs Bern₁₅ (δ = 0.005, 0.01, 0.05; auto range) and [−5,5]", base + pick(15)),
    ]


def draw_figures(
    name: str, runs: Sequence[dict[str, Any]], folder: Path, baselines: Sequence[str]
) -> list[Path]:
    """Every figure of one folder; returns the paths written. ``baselines``: the paper's
    baseline variants (ReLU first), drawn against each Bernstein subset."""
    if name == "sweep":
        return [_sweep(runs, folder / "sweep.png")]
    names = _names(runs)
    base = [n for n in baselines if n in names]
    styles = Styles(names)
    title = f"{name}, {len(runs)} seeds (line: mean; band: min–max)"
    written = [
        _fig1(runs, base, styles, folder / "fig1_min_deriv_by_epoch.png", title),
        _fig2(runs, base, styles, folder / "fig2_min_deriv_by_depth.png", title),
        _fig3(runs, _panels(names, base), styles, folder / "fig3_dead_by_layer.png", title),
        _fig3b(runs, styles, folder / "fig3b_bn_controls.png", title),
        _fig4(runs, _panels(names, base), styles, folder / "fig4_mag_by_epoch.png", title),
    ]
    if name == "mnist":
        written.append(_fig5(runs, names, base, styles, folder / "fig5_mnist.png", title))
    return written


def _finish(figure: Figure, axes: Sequence[Any], suptitle: str, path: Path) -> Path:
    """The figure's title and shared legend, written atomically to ``path``."""
    figure.suptitle(suptitle, fontsize=9)
    _legend(figure, axes)
    _save(figure, path)
    return path


def _fig1(runs: Any, base: list[str], styles: Styles, path: Path, title: str) -> Path:
    shown = [*base, "bern9:bn", "bern15:bn"]
    figure, axes = _figure(3)
    count = len(_variant(runs[0], "baseline")["history"][0]["site_min_abs_deriv"])  # type: ignore[index]
    for ax, layer in zip(axes, (1, count // 2, count), strict=True):
        read = lambda v, i=layer - 1: [_num(h["site_min_abs_deriv"][i]) for h in v["history"]]  # noqa: E731
        zeros = _plot(ax, runs, shown, styles, read, start=0, floor=1e-8)
        _zero_note(ax, zeros, "min |σ'| = 0 (drawn at 1e-8), every epoch and seed", y=0.3)
        _delta_bars(ax, runs, shown, styles)
        ax.set(yscale="log", xlabel="epoch", ylabel="min |σ'| (floor 1e-8)", title=f"layer {layer}")
    return _finish(figure, axes, f"Fig. 1 — min |σ'| across training epochs; {title}", path)


def _fig2(runs: Any, base: list[str], styles: Styles, path: Path, title: str) -> Path:
    shown = [*base, "bern9:bn", "bern15:bn"]
    figure, axes = _figure(1, width=8.0)
    read = lambda v: [_num(x) for x in v["history"][-1]["site_min_abs_deriv"]]  # noqa: E731
    zeros = _plot(axes[0], runs, shown, styles, read, floor=1e-8)
    _zero_note(axes[0], zeros, "min |σ'| = 0 (drawn at 1e-8) in every layer, every seed", y=0.3)
    _delta_bars(axes[0], runs, shown, styles)
    axes[0].set(yscale="log", xlabel="layer", ylabel="min |σ'| after the last epoch (floor 1e-8)")
    return _finish(figure, axes, f"Fig. 2 — min |σ'| across depth; {title}", path)


def _dead_axes(ax: Any) -> None:
    ax.set_yscale("symlog", linthresh=DEAD_LINTHRESH)
    ax.set_ylim(-0.05, 110)
    ax.set(xlabel="layer", ylabel="dead %, per batch, last epoch (symlog)")


def _fig3(runs: Any, panels: list[tuple[str, list[str]]], styles: Styles, path: Path,
          title: str) -> Path:  # fmt: skip
    figure, axes = _figure(3)
    for ax, (subtitle, shown) in zip(axes, panels, strict=True):
        _zero_note(ax, _plot(ax, runs, shown, styles, _sites("dead_pct")))
        _dead_axes(ax)
        ax.set_title(subtitle, fontsize=8)
    return _finish(figure, axes, f"Fig. 3 — dead neurons per layer (paper's window); {title}", path)


def _fig3b(runs: Any, styles: Styles, path: Path, title: str) -> Path:
    pairs = [("baseline", "relu:bn"), ("gelu", "gelu:bn"), ("lrelu0.01", "lrelu0.01:bn"),
             ("selu:init=lecun", "selu:init=lecun:bn")]  # fmt: skip
    figure, axes = _figure(len(pairs), width=4.2)
    for ax, pair in zip(axes, pairs, strict=True):
        _zero_note(ax, _plot(ax, runs, [*pair, "bern9:bn"], styles, _sites("dead_pct")))
        _dead_axes(ax)
        ax.set_title(f"{label(pair[0])} with and without BN", fontsize=8)
    return _finish(figure, axes, f"BN controls — dead % per layer (paper's window); {title}", path)


def _fig4(runs: Any, panels: list[tuple[str, list[str]]], styles: Styles, path: Path,
          title: str) -> Path:  # fmt: skip
    figure, axes = _figure(3)
    for ax, (subtitle, shown) in zip(axes, panels, strict=True):
        _plot(
            ax, runs, shown, styles, lambda v: _history("train_first_site_mag")(v)[1:], floor=1e-12
        )
        ax.set(yscale="log", xlabel="epoch", ylabel="MAG of layer 1 over the epoch's steps")
        ax.set_title(subtitle, fontsize=8)
    return _finish(
        figure, axes, f"Fig. 4 — mean absolute gradient, first layer (training); {title}", path
    )


def _fig5(
    runs: Any, names: list[str], base: list[str], styles: Styles, path: Path, title: str
) -> Path:
    figure, axes = _figure(3)
    bern = [n for n in names if n.startswith("bern")]
    _plot(axes[0], runs, base + bern, styles, lambda v: _history("train_first_site_mag")(v)[1:],
          floor=1e-12)  # fmt: skip
    axes[0].set(yscale="log", xlabel="epoch", ylabel="MAG of layer 1 over the epoch's steps")
    axes[0].set_title("MAG, first layer", fontsize=8)
    for ax, shown, subtitle in ((axes[1], base, "non-Bernstein"), (axes[2], bern, "Bernstein")):
        _zero_note(ax, _plot(ax, runs, shown, styles, _sites("dead_pct")))
        _dead_axes(ax)
        ax.set_title(f"dead ratio, {subtitle}", fontsize=8)
    return _finish(figure, axes, f"Fig. 5 — MNIST; {title}", path)


def _sweep(runs: Sequence[dict[str, Any]], path: Path) -> Path:
    """Worst-layer dead % (per batch, last epoch) and accuracy against lr, one line per variant
    and training length (solid: the shortest, dashed: longer)."""
    groups: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for run in runs:
        key = (int(run["settings"]["epochs_requested"]), float(run["settings"]["lr"]))
        groups.setdefault(key, []).append(run)
    lengths = sorted({epochs for epochs, _ in groups})
    names = _names(runs)
    styles = Styles(names)
    figure, axes = _figure(2)
    for ax, key, ylabel in (
        (axes[0], "train_max_dead_pct", "worst-layer dead %, per batch, last epoch"),
        (axes[1], "accuracy", "held-out accuracy"),
    ):
        for epochs in lengths:
            lrs = sorted(lr for e, lr in groups if e == epochs)
            for name in names:
                means, lows, highs = [], [], []
                for lr in lrs:
                    values = [_num(v["summary"].get(key)) for r in groups[(epochs, lr)]
                              if (v := _variant(r, name)) is not None]  # fmt: skip
                    values = [x for x in values if math.isfinite(x)]
                    means.append(sum(values) / len(values) if values else math.nan)
                    lows.append(min(values) if values else math.nan)
                    highs.append(max(values) if values else math.nan)
                style = {**styles(name), "linestyle": "-" if epochs == lengths[0] else "--"}
                ax.plot(lrs, means, label=f"{label(name)}, {epochs} epochs", **style)
                ax.fill_between(lrs, lows, highs, color=style["color"], alpha=0.12, linewidth=0)
        ax.set(xscale="log", xlabel="Adam lr", ylabel=ylabel)
    axes[0].axhline(90, color="grey", linestyle=":", linewidth=0.8)
    axes[0].annotate(
        "paper: ~90 %", (0.02, 90), xycoords=("axes fraction", "data"), xytext=(0, 3),
        textcoords="offset points", fontsize=7, color="grey",
    )  # fmt: skip
    seeds = len({r["seed"] for r in runs})
    title = f"lr / epoch sweep on digits, {seeds} seeds (line: mean; band: min–max)"
    return _finish(figure, axes, title, path)
