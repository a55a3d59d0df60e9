"""What a comparison returns: per-variant history, final site rows and a one-line summary.

Every number here is read from ``neurodiag.scan`` reports (and the training loop's loss and
accuracy); nothing is measured again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from neurodiag.monitor.window import summarize_rows
from neurodiag.registry import Registry
from neurodiag.report.model import COLUMNS, Report

SUMMARY_COLUMNS: tuple[str, ...] = (
    "variant",
    "activation",
    "mean_dead_pct",
    "max_dead_pct",
    "train_mean_dead_pct",
    "train_max_dead_pct",
    "mean_zero_output_pct",
    "max_zero_output_pct",
    "mean_dormant_pct",
    "max_dormant_pct",
    "first_site_mag",
    "min_abs_deriv",
    "delta_bar",
    "bound_ok",
    "loss",
    "accuracy",
    "time_s",
)


def site_summary(report: Report) -> dict[str, Any]:
    """Scan-wide numbers of one report: dead % (mean/max over sites), the other dead criteria
    (zero-output %, τ-dormant %: mean/max over sites), first-site MAG, bounds.

    The dead % and MAG figures are the Monitor's window summary (``summarize_rows``);
    ``delta_bar`` is the smallest δ̄ over Bernstein sites (NaN without any); ``bound_ok`` is True
    when every Bernstein site kept min |σ'| ≥ δ̄, None without Bernstein sites.
    """
    rows = report.rows
    bern = [r for r in rows if not _isnan(r["delta_bar"])]
    summary = summarize_rows(rows, criteria=True)
    return {
        "mean_dead_pct": summary["mean_dead_pct"],
        "max_dead_pct": summary["max_dead_pct"],
        "mean_zero_output_pct": summary["mean_zero_output_pct"],
        "max_zero_output_pct": summary["max_zero_output_pct"],
        "mean_dormant_pct": summary["mean_dormant_pct"],
        "max_dormant_pct": summary["max_dormant_pct"],
        "first_site_mag": summary["first_site_mag"],
        "min_abs_deriv": summary["min_abs_deriv"],
        "delta_bar": _nanmin(float(r["delta_bar"]) for r in bern),
        "bound_ok": all(r["bound_ok"] is True for r in bern) if bern else None,
    }


def train_window_summary(window: Report | None, *, first_site_mag: bool = False) -> dict[str, Any]:
    """Mean/max dead % over the sites in one epoch's training steps (NaN: none measured), and
    with ``first_site_mag`` the first site's MAG over them (the paper's Fig. 4, per epoch).

    ``compare`` measures that window with ``dead_window="batch"``: a site's dead % is the
    per-batch dead % averaged over the epoch's training batches (the paper's Fig. 3 window).
    """
    summary = summarize_rows(window.rows if window is not None else [])
    out = {
        "train_mean_dead_pct": summary["mean_dead_pct"],
        "train_max_dead_pct": summary["max_dead_pct"],
    }
    if first_site_mag:
        out["train_first_site_mag"] = summary["first_site_mag"]
    return out


@dataclass(frozen=True)
class Criterion:
    """One dead criterion of ``compare``'s side-by-side view.

    ``summary_columns``: its mean/max over sites in ``SUMMARY_COLUMNS`` (empty: per site only);
    ``site_column``: the per-site column it summarises (in ``sites``, or ``train_window_sites``
    for the training window); ``bounded_zero``: 0 by construction on a variant whose every site
    has |σ'| bounded below by more than ε (``zero_by_construction``).
    """

    key: str
    label: str
    summary_columns: tuple[str, ...]
    site_column: str
    bounded_zero: bool


#: The criteria in the order the human outputs list them.
CRITERIA: tuple[Criterion, ...] = (
    Criterion("dead", "dead", ("mean_dead_pct", "max_dead_pct"), "dead_pct", True),
    Criterion(
        "train_dead",
        "train dead",
        ("train_mean_dead_pct", "train_max_dead_pct"),
        "dead_pct",
        True,
    ),
    Criterion(
        "zero_output",
        "zero-output",
        ("mean_zero_output_pct", "max_zero_output_pct"),
        "zero_output_pct",
        True,
    ),
    Criterion(
        "dormant", "τ-dormant", ("mean_dormant_pct", "max_dormant_pct"), "dormant_pct", False
    ),
    Criterion("grad_dormant", "grad-dormant", (), "grad_dormant_pct", False),
)


#: When dead, train dead and zero-output are 0 by construction (``zero_by_construction``).
ZERO_RULE = (
    "every site's |σ'| is bounded below by more than ε for every input (Bernstein: δ̄ > ε; "
    "leaky ReLU: |slope| > ε): no position passes |σ'| ≤ ε, and σ is strictly monotone, so a = 0 "
    "at one z at most (z = 0 for leaky ReLU)"
)


def criterion_definitions(settings: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """(definition, window) of each criterion under a comparison's ``settings`` (ε, τ, window)."""
    eps = float(settings.get("eps", math.nan))
    tau = float(settings.get("tau", math.nan))
    scan_window = (
        "post-epoch scan, per-batch dead % averaged over its batches (dead_window=batch)"
        if settings.get("dead_window") == "batch"
        else "post-epoch scan, whole (every position of every scanned batch)"
    )
    return {
        "dead": (f"|σ'(z)| ≤ ε = {eps:g} at every finite position", scan_window),
        "train_dead": (
            f"|σ'(z)| ≤ ε = {eps:g} at every position of one training batch, % averaged over "
            "the batches",
            "last epoch's training batches, per batch (the paper's Fig. 3 window)",
        ),
        "zero_output": (
            "output a exactly 0 at every finite position (E|a_i| = 0: never fires)",
            "post-epoch scan, whole",
        ),
        "dormant": (
            f"E|a_i| / mean_k E|a_k| ≤ τ = {tau:g} (Sokar et al. 2023)",
            "post-epoch scan, whole",
        ),
        "grad_dormant": (
            f"E|∂L/∂a_i| / mean_k E|∂L/∂a_k| ≤ τ = {tau:g} (per site: sites[].grad_dormant_pct)",
            "post-epoch scan, whole",
        ),
    }


def zero_by_construction(rows: Sequence[Mapping[str, Any]], model: Any, eps: float) -> str | None:
    """Why dead, train dead and zero-output are 0 by construction for a variant, or None.

    They are when every site's |σ'| is bounded below by more than ε whatever its input, known
    from what the activation is: a Bernstein site's δ̄ (and its bound held: ``bound_ok`` not
    False), a ``nn.LeakyReLU`` module's min(|slope|, 1). Then no position is ever ≤ ε, and σ is
    strictly monotone, so a is 0 at one z at most. Any other site (a functional leaky_relu,
    whose slope the report does not keep, included) makes no claim.
    """
    bars: list[float] = []
    slopes: list[float] = []
    for row in rows:
        floor = _derivative_floor(row, model)
        if floor is None or not floor[1] > eps:
            return None
        (bars if floor[0] == "δ̄" else slopes).append(floor[1])
    if not rows:
        return None
    parts = [f"{name} ≥ {min(v):g}" for name, v in (("δ̄", bars), ("slope", slopes)) if v]
    return f"every site's |σ'| is bounded below: {' and '.join(parts)} > ε = {eps:g}"


def _derivative_floor(row: Mapping[str, Any], model: Any) -> tuple[str, float] | None:
    """("δ̄" or "slope", a lower bound of |σ'| at this site for any input), or None if unknown."""
    from torch import nn

    if not _isnan(row.get("delta_bar")):
        return None if row.get("bound_ok") is False else ("δ̄", float(row["delta_bar"]))
    if model is None or row.get("kind") != "module":
        return None
    try:
        module = model.get_submodule(str(row["site"]).split("#")[0])
    except AttributeError:
        return None
    if isinstance(module, nn.LeakyReLU):
        return "slope", min(abs(float(module.negative_slope)), 1.0)
    return None


def criteria_doc(variants: Sequence[VariantResult], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON's ``criteria``: per criterion its definition, window, columns, and the variants
    for which it is 0 by construction (with why)."""
    eps = float(settings.get("eps", math.nan))
    reasons = {v.name: zero_by_construction(v.sites, v.model, eps) for v in variants}
    definitions = criterion_definitions(settings)
    doc: dict[str, Any] = {}
    for criterion in CRITERIA:
        definition, window = definitions[criterion.key]
        zero = (
            {name: why for name, why in reasons.items() if why is not None}
            if criterion.bounded_zero
            else {}
        )
        doc[criterion.key] = {
            "label": criterion.label,
            "definition": definition,
            "window": window,
            "summary_columns": list(criterion.summary_columns),
            "site_column": criterion.site_column,
            "site_rows": "train_window_sites" if criterion.key == "train_dead" else "sites",
            "zero_by_construction": zero,
            "zero_when": ZERO_RULE if criterion.bounded_zero else None,
            "can_be_nonzero_for_every_activation": not criterion.bounded_zero,
        }
    return doc


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
        """Jupyter: the settings line and the summary table (``COMPARISON_VIEWS["html"]``)."""
        return COMPARISON_VIEWS["html"](self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None): variants with history, sites and summary, plus settings."""
        return {
            "variants": [v.to_dict() for v in self.variants],
            "seed": self.seed,
            "epochs": self.epochs,
            "settings": _jsonable(self.settings),
            "criteria": self.criteria(),
            "wall_time_s": self.wall_time_s,
        }

    def best(self) -> Best:
        """The variant to prefer and why, and the variants flagged (``best_variant``)."""
        rows = [v.summary for v in self.variants]
        return best_variant(rows, trained=self.epochs > 0)

    def criteria(self) -> dict[str, Any]:
        """The dead criteria side by side (``criteria_doc``): definitions, windows, columns and
        which variants have which at 0 by construction."""
        return criteria_doc(self.variants, self.settings)


#: How a Comparison shows itself in Jupyter ("html"): registered by ``neurodiag.compare.render``,
#: so this data module imports no renderer (no import cycle through display methods).
COMPARISON_VIEWS: Registry[Callable[[Comparison], str]] = Registry("comparison view")


@dataclass(frozen=True)
class Best:
    """The variant to prefer and why (``variant`` None: no ranking), plus the variants flagged
    whatever their rank (name -> why)."""

    variant: str | None
    why: str
    flagged: dict[str, str]


def best_variant(summaries: Sequence[Mapping[str, Any]], *, trained: bool) -> Best:
    """Rank summary rows: highest held-out accuracy, ties broken by lower loss; without any
    accuracy, lowest loss. A variant with a broken Bernstein bound or a non-finite loss is
    flagged and never picked; untrained (scan-only) variants are not ranked at all.
    """
    flagged: dict[str, str] = {}
    for row in summaries:
        reasons = []
        if row.get("bound_ok") is False:
            reasons.append("bound broken (min |σ'| < δ̄)")
        if trained and not _finite(row.get("loss")):
            reasons.append("loss not finite")
        if reasons:
            flagged[str(row["variant"])] = ", ".join(reasons)
    if not trained:
        return Best(
            None, "scan only: nothing was trained, so no loss or accuracy ranks them", flagged
        )
    candidates = [r for r in summaries if str(r["variant"]) not in flagged]
    scored = [r for r in candidates if _finite(r.get("accuracy"))]
    if scored:
        top = max(scored, key=lambda r: (float(r["accuracy"]), -_or_inf(r.get("loss"))))
        why = f"highest held-out accuracy ({100 * float(top['accuracy']):.1f}%"
        ties = [r for r in scored if float(r["accuracy"]) == float(top["accuracy"])]
        why += f", tie broken by lower loss {float(top['loss']):.4f})" if len(ties) > 1 else ")"
        return Best(str(top["variant"]), why, flagged)
    if candidates:
        top = min(candidates, key=lambda r: float(r["loss"]))
        why = f"lowest training loss ({float(top['loss']):.4f}; no held-out accuracy)"
        return Best(str(top["variant"]), why, flagged)
    return Best(None, "every variant is flagged", flagged)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _or_inf(value: Any) -> float:
    return float(value) if _finite(value) else math.inf


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
