"""The result of a scan: a header of run facts plus one tidy row per activation site.

Measuring and displaying are kept apart: a Report holds numbers only; renderers in
``neurodiag.report.render`` turn it into text, and read nothing but the Report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pandas as pd
import torch

from neurodiag.registry import Registry
from neurodiag.stats.registry import all_columns
from neurodiag.stats.statistic import Column

#: Per-site columns, in the order every renderer shows them: declared by the statistics
#: (``neurodiag.stats.registry``), see docs/metrics.md.
COLUMN_SPECS: tuple[Column, ...] = all_columns()
COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMN_SPECS)
COLUMN_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMN_SPECS}


#: How a Report shows itself: "repr" (one line at a prompt) and "html" (Jupyter). The renderers
#: register both (``neurodiag.report.render``): a data module imports no renderer, so the
#: package has no import cycle through display methods.
REPORT_VIEWS: Registry[Callable[[Report], str]] = Registry("report view")


@dataclass(frozen=True)
class ScanHeader:
    """Facts about the run that a reader needs to trust (or reproduce) the numbers."""

    model: str
    data: str
    loss: str
    samples: int
    batches: int
    device: str
    dtype: str
    seed: int | None
    wall_time_s: float
    eps: float
    tau: float
    dead_window: str = "scan"
    mode: str = "eval"
    partial: bool = False
    notes: tuple[str, ...] = ()
    #: gates (``role`` = gate) are judged like activations; by default only NaN/Inf flag them
    flag_gates: bool = False
    #: which training steps a Monitor report covers (``epoch 3 · steps 40-59``); None for a scan
    window: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


class SiteNeurons:
    """Per-neuron tensors of one site (on the CPU, detached), for the Python API.

    Attributes (each ``(F,)``): ``dead`` (bool), ``max_abs_deriv``, ``min_abs_deriv``,
    ``mean_abs_activation``, ``dormant_score`` (s_i = E|a_i| / mean_k E|a_k|), ``mean_abs_grad``,
    ``grad_score``, ``inactive_fraction``, ``finite_positions``; whatever else a registered
    statistic computes per neuron is there under its name too (``names()``).
    """

    def __init__(self, **values: torch.Tensor) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> torch.Tensor:
        values = self.__dict__.get("_values", {})
        if name in values:
            tensor: torch.Tensor = values[name]
            return tensor
        raise AttributeError(f"no per-neuron value {name!r}; known: {', '.join(values)}")

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._values[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._values)

    def __repr__(self) -> str:
        neurons = next((len(v) for v in self._values.values()), 0)
        return f"SiteNeurons({neurons} neurons: {', '.join(self._values)})"


class UnknownSite(KeyError):
    """A site name not in ``report.neurons``; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError's own repr()s the message into quotes
        return str(self.args[0])


class NeuronsBySite(dict[str, SiteNeurons]):
    """``report.neurons``: per-neuron tensors by site name; an unknown name says which exist."""

    def __missing__(self, site: str) -> SiteNeurons:
        import difflib

        names = list(self)
        close = difflib.get_close_matches(str(site), names, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        shown = ", ".join(names[:20]) + (f", … {len(names) - 20} more" if len(names) > 20 else "")
        raise UnknownSite(f"no site {site!r} in report.neurons{hint} sites: {shown or 'none'}")


@dataclass(frozen=True)
class ReportView:
    """Which rows the human formats (table, Markdown, HTML) list; the verdict above them and
    the machine formats (CSV, JSON, ``to_frame``) always cover every site."""

    #: only errors and warnings (README "Reading a report")
    only_flagged: bool = False
    #: at most this many rows, the worst first
    top: int | None = None


@dataclass
class Report:
    """What ``neurodiag.scan`` returns: ``header``, ``rows`` (one dict per site, keys = COLUMNS)."""

    header: ScanHeader
    rows: list[dict[str, Any]]
    neurons: dict[str, SiteNeurons] = field(default_factory=dict)
    view: ReportView = field(default_factory=ReportView)

    def __post_init__(self) -> None:
        if not isinstance(self.neurons, NeuronsBySite):
            self.neurons = NeuronsBySite(self.neurons)
        # rows of reports and baselines written before these columns existed
        for row in self.rows:
            row.setdefault("class", row.get("activation"))
            row.setdefault("role", "activation")

    def to_frame(self) -> pd.DataFrame:
        """One row per site in forward execution order, columns exactly ``COLUMNS``."""
        frame = pd.DataFrame(self.rows, columns=list(COLUMNS))
        typed: pd.DataFrame = frame.astype({c.name: c.dtype for c in COLUMN_SPECS})
        return typed

    def shown(self, *, only_flagged: bool = False, top: int | None = None) -> Report:
        """The same report with a row selection for the human formats (``--only-flagged``,
        ``--top N``); the rows themselves are shared, not copied."""
        if top is not None and top < 1:
            raise ValueError(f"top must be a positive number of rows, got {top}")
        return replace(self, view=ReportView(only_flagged=only_flagged, top=top))

    def __repr__(self) -> str:
        """The one-line verdict (``REPORT_VIEWS["repr"]``, registered by the renderers)."""
        show = REPORT_VIEWS.get("repr")
        if show is None:  # only while neurodiag.report itself is still importing
            return f"<Report of {self.header.model!r}: {len(self.rows)} sites>"
        return show(self)

    def _repr_html_(self) -> str:
        """Jupyter: the verdict, the facts and the table, flagged rows first."""
        return REPORT_VIEWS["html"](self)

    @property
    def sites(self) -> list[str]:
        return [str(row["site"]) for row in self.rows]

    def row(self, site: str) -> dict[str, Any]:
        for row in self.rows:
            if row["site"] == site:
                return row
        raise KeyError(f"no site named {site!r}; sites: {', '.join(self.sites)}")
