"""The registry of statistics: a new statistic is one file plus one line here.

The order is the column order of every report. Report columns, table headers, CSV/JSON fields,
``check`` thresholds (flags and config keys), baseline comparison and the README's column table
all derive from these declarations.
"""

from __future__ import annotations

from neurodiag.registry import Registry, RegistryView
from neurodiag.stats.bernstein_bound import BernsteinBound
from neurodiag.stats.dead import DeadNeurons
from neurodiag.stats.dormant import DormantNeurons
from neurodiag.stats.grad_dormant import GradDormantNeurons
from neurodiag.stats.inactive import InactiveEntries
from neurodiag.stats.mag import MeanAbsGradient
from neurodiag.stats.massive import MassiveActivations
from neurodiag.stats.min_deriv import MinAbsDerivative
from neurodiag.stats.nonfinite import NonFiniteEntries
from neurodiag.stats.rank import RepresentationRank
from neurodiag.stats.statistic import Column, Statistic, Threshold
from neurodiag.stats.zero_output import ZeroOutputNeurons


class StatisticRegistry(RegistryView[type[Statistic]]):
    """Ordered statistics by name (a ``Registry``), plus the rule that no two share a column."""

    def __init__(self) -> None:
        self.entries: Registry[type[Statistic]] = Registry("statistic")

    def register(self, cls: type[Statistic], *, overwrite: bool = False) -> type[Statistic]:
        """Add ``cls`` under its ``name``; usable as a class decorator."""
        taken = {c.name for name, other in self.items() if name != cls.name for c in other.columns}
        clash = [c.name for c in cls.columns if c.name in taken]
        if clash:
            raise ValueError(f"statistic {cls.name!r}: column {clash[0]!r} is already taken")
        return self.entries.register(cls.name, cls, overwrite=overwrite)

    def columns(self) -> tuple[Column, ...]:
        return tuple(c for cls in self.values() for c in cls.columns)

    def thresholds(self) -> dict[str, tuple[Column, Threshold]]:
        """Every ``check`` threshold key with the column it reads."""
        return {c.threshold.key: (c, c.threshold) for c in self.columns() if c.threshold}


STATISTICS = StatisticRegistry()
for _cls in (
    DeadNeurons,
    ZeroOutputNeurons,
    DormantNeurons,
    GradDormantNeurons,
    MeanAbsGradient,
    MinAbsDerivative,
    BernsteinBound,
    InactiveEntries,
    NonFiniteEntries,
    MassiveActivations,
    RepresentationRank,
):
    STATISTICS.register(_cls)

#: The columns that name a site rather than measure it (first in every report).
IDENTITY_COLUMNS: tuple[Column, ...] = (
    Column(
        "site", "object", "flag", "site name: module path, call index, functional op", align="left"
    ),
    Column(
        "activation",
        "object",
        "flag",
        "the function, one canonical name (gelu, gelu_tanh, silu...) whatever computes it",
        align="left",
    ),
    Column(
        "class",
        "object",
        "flag",
        "what computes it: the module class (GELUActivation) or the call (F.gelu)",
        align="left",
        table=False,
    ),
    # (the table shows it in the site name: functional sites are ``module:op#i``)
    Column("kind", "object", "flag", "module or functional", align="left", table=False),
    Column(
        "role",
        "object",
        "flag",
        "activation, or gate: its output scales another tensor (not flagged by default)",
        align="left",
    ),
    Column("neurons", "int64", "count", "neurons of the site (size of its feature dim)"),
    Column(
        "feature_dim",
        "Int64",  # absent in reports written before 0.2
        "count",
        "the dim that indexes neurons, from the layer feeding the site (docs/metrics.md: "
        "Neuron axis)",
        table=False,
    ),
)


def all_columns() -> tuple[Column, ...]:
    """Identity columns, then every statistic's, in report order."""
    return IDENTITY_COLUMNS + STATISTICS.columns()


__all__ = ["IDENTITY_COLUMNS", "STATISTICS", "StatisticRegistry", "all_columns"]
