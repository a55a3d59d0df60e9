"""The result of a scan: a header of run facts plus one tidy row per activation site.

Measuring and displaying are kept apart: a Report holds numbers only; renderers in
``neurodiag.report.render`` turn it into text, and read nothing but the Report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

#: Per-site columns, in the order every renderer shows them (see DESIGN.md / README "Metrics").
COLUMNS: tuple[str, ...] = (
    "site",
    "activation",
    "kind",
    "neurons",
    "dead_pct",
    "dormant_pct",
    "grad_dormant_pct",
    "mag",
    "min_abs_deriv",
    "delta_bar",
    "bound_ok",
    "nonfinite",
)


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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class SiteNeurons:
    """Per-neuron tensors of one site (on the CPU, detached), for the Python API."""

    dead: torch.Tensor  # bool (F,)
    dormant_score: torch.Tensor  # float (F,)  s_i = E|a_i| / mean_k E|a_k|
    grad_score: torch.Tensor  # float (F,)  same on E|dL/da_i|
    mean_abs_activation: torch.Tensor  # float (F,)
    mean_abs_grad: torch.Tensor  # float (F,)
    max_abs_deriv: torch.Tensor  # float (F,)
    min_abs_deriv: torch.Tensor  # float (F,)


@dataclass
class Report:
    """What ``neurodiag.scan`` returns: ``header``, ``rows`` (one dict per site, keys = COLUMNS)."""

    header: ScanHeader
    rows: list[dict[str, Any]]
    neurons: dict[str, SiteNeurons] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per site in forward execution order, columns exactly ``COLUMNS``."""
        frame = pd.DataFrame(self.rows, columns=list(COLUMNS))
        typed: pd.DataFrame = frame.astype(
            {
                "neurons": "int64",
                "nonfinite": "int64",
                "dead_pct": "float64",
                "dormant_pct": "float64",
                "grad_dormant_pct": "float64",
                "mag": "float64",
                "min_abs_deriv": "float64",
                "delta_bar": "float64",
                "bound_ok": "object",
            }
        )
        return typed

    @property
    def sites(self) -> list[str]:
        return [str(row["site"]) for row in self.rows]

    def row(self, site: str) -> dict[str, Any]:
        for row in self.rows:
            if row["site"] == site:
                return row
        raise KeyError(f"no site named {site!r}; sites: {', '.join(self.sites)}")
