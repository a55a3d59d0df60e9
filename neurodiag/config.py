"""``ScanConfig``: every scan option and its default, written once.

``neurodiag.scan``, ``Monitor``, ``compare``, ``check``, ``assert_healthy`` and the CLI all build
one of these, so a default (ε, τ, the dead window, ...) cannot differ between them. Validation
happens here, at the edge, with a one-line message that names the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from neurodiag.errors import NeurodiagError

#: ε: a neuron is dead when |σ'(z)| ≤ ε at every finite position (docs/metrics.md).
DEFAULT_EPS = 1e-3
#: τ: a neuron is τ-dormant when its normalised score s_i ≤ τ (Sokar et al. 2023).
DEFAULT_TAU = 0.1
#: Sites with more neurons get no representation rank (its Gram state is neurons² float64:
#: 128 MiB at 4096).
DEFAULT_RANK_MAX_NEURONS = 4096
DEAD_WINDOWS = ("scan", "batch")
MODES = ("eval", "train")


@dataclass(frozen=True)
class ScanConfig:
    """How a scan measures: thresholds of the statistics, which sites, which work to do.

    ``eps``/``tau``: the dead and τ-dormant thresholds. ``dead_window``: "scan" (dead over the
    whole scan) or "batch" (the paper's Fig. 3: per-call dead fraction, averaged). ``gradients``:
    False runs the forward alone (the gradient columns are NaN). ``mode``: the model's train/eval
    behaviour during a scan. ``include``/``exclude``: site-name globs. ``feature_dims``: per-site
    neuron-dim overrides. ``max_batches``, ``seed``, ``timeout_s``: how much data, which RNG.
    ``flag_gates``: judge gates (sites whose output scales another tensor) like activations;
    by default only NaN/Inf flags them. ``rank``: also measure each site's representation rank
    (``effective_rank``, ``srank``; opt-in: a neurons × neurons float64 Gram matrix per site,
    O(positions × neurons²) per call), skipped (NaN) at sites with more than
    ``rank_max_neurons`` neurons.
    """

    eps: float = DEFAULT_EPS
    tau: float = DEFAULT_TAU
    dead_window: str = "scan"
    gradients: bool = True
    mode: str = "eval"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    feature_dims: Mapping[str, int] = field(default_factory=dict)
    max_batches: int | None = None
    seed: int = 0
    timeout_s: float | None = None
    flag_gates: bool = False
    rank: bool = False
    rank_max_neurons: int = DEFAULT_RANK_MAX_NEURONS

    def __post_init__(self) -> None:
        if self.dead_window not in DEAD_WINDOWS:
            raise NeurodiagError(
                f"dead window must be one of {', '.join(DEAD_WINDOWS)}, got {self.dead_window!r}"
            )
        if self.mode not in MODES:
            raise NeurodiagError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("eps", "tau"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise NeurodiagError(f"{name} must be a finite number >= 0, got {value}")
        if not isinstance(self.rank, bool):
            raise NeurodiagError(f"rank must be True or False, got {self.rank!r}")
        limit = self.rank_max_neurons
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise NeurodiagError(f"rank_max_neurons must be an integer >= 1, got {limit!r}")
        if self.max_batches is not None and self.max_batches < 1:
            raise NeurodiagError(f"max_batches must be >= 1, got {self.max_batches}")
        # sequences given as lists stay hashable and immutable
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "feature_dims", dict(self.feature_dims))

    def with_options(self, **changes: Any) -> ScanConfig:
        """A copy with ``changes`` (validated like the constructor; unknown names refused)."""
        unknown = sorted(set(changes) - set(OPTION_NAMES))
        if unknown:
            raise NeurodiagError(
                f"unknown scan option {', '.join(unknown)}; valid: {', '.join(OPTION_NAMES)}"
            )
        return replace(self, **changes)


#: Every option name of ``ScanConfig``, in declaration order (``scan(**options)`` accepts these).
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ScanConfig))

__all__ = [
    "DEAD_WINDOWS",
    "DEFAULT_EPS",
    "DEFAULT_RANK_MAX_NEURONS",
    "DEFAULT_TAU",
    "MODES",
    "OPTION_NAMES",
    "ScanConfig",
]
