"""``neurodiag treat`` as one library call: scan, treat what the scan found dead (ReDo, ReGraMa
or an activation swap), re-scan on the same batches, and assess what stayed dead and why.

The CLI only loads the model and data, calls ``run_treatment`` and renders the ``Treatment``
(``neurodiag.treat.render``); a notebook or a script gets the same numbers from the same call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from neurodiag.activations.specs import parse_spec
from neurodiag.config import ScanConfig
from neurodiag.errors import NeurodiagError
from neurodiag.loss import UserLoss
from neurodiag.report.model import Report
from neurodiag.scan import ScanInterrupted, scan
from neurodiag.treat.gradients import measure_grama
from neurodiag.treat.proof import assess, output_change
from neurodiag.treat.recycle import Outcome, RecycleResult, recycle, swap_failing
from neurodiag.treat.topology import topology

#: The treatments ``run_treatment`` offers; ``swap:SPEC`` swaps the error sites' activation.
TREATMENTS = ("redo", "regrama")


@dataclass(frozen=True)
class Treatment:
    """A treated model and its proof: the scans ``before`` and ``after``, the largest output
    ``change`` on the scanned batches, and the ``outcome`` (what stayed dead and why)."""

    method: str
    before: Report
    after: Report
    result: RecycleResult
    change: float
    outcome: Outcome
    batches: int

    @property
    def swap_spec(self) -> str | None:
        """The activation spec of a ``swap:SPEC`` treatment, else None."""
        return swap_spec(self.method)

    def rebuild(self) -> dict[str, Any] | None:
        """What ``swap_activations`` needs to rebuild a swapped model (None for recycling)."""
        spec = self.swap_spec
        if spec is None:
            return None
        return {"spec": spec, "sites": [t.site for t in self.result.treated]}


class TreatInterrupted(Exception):
    """Ctrl-C or SIGTERM during the scan ``when`` ("before" or "after") treating."""

    def __init__(self, when: str, terminated: bool) -> None:
        super().__init__(f"interrupted during the scan {when} treating")
        self.when = when
        self.terminated = terminated


def swap_spec(method: str) -> str | None:
    """``swap:SPEC`` -> SPEC; None for the other methods."""
    return method.partition(":")[2] if method.startswith("swap:") else None


def check_method(method: str) -> None:
    """Refuse an unknown method, and a bad swap SPEC, before any scan (not after it, or never
    when no site fails)."""
    spec = swap_spec(method)
    if method not in TREATMENTS and not spec:
        raise NeurodiagError(
            f"--method {method!r}: use redo, regrama or swap:SPEC (e.g. swap:bern9)"
        )
    if spec:
        parse_spec(spec)


def run_treatment(
    model: nn.Module,
    batches: Sequence[Any],
    config: ScanConfig,
    *,
    method: str = "redo",
    dormant_tau: float | None = None,
    loss_fn: UserLoss | None = None,
    model_name: str | None = None,
    data_name: str | None = None,
) -> Treatment:
    """Scan ``model`` on ``batches`` with ``config``, treat it by ``method``, re-scan the treated
    copy on the same batches and assess it. ``model`` itself is left as it was.

    ``dormant_tau``: redo also recycles τ-dormant units; regrama's threshold on G (measured on
    every batch with ``loss_fn``, the scan's loss rule). Raises ``TreatInterrupted`` on Ctrl-C.
    """
    check_method(method)
    if not batches:
        raise NeurodiagError("the data gave no batch to scan")

    def scanned(target: nn.Module, when: str) -> Report:
        try:
            return scan(
                target, batches, config, loss_fn=loss_fn, model_name=model_name, data_name=data_name
            )
        except ScanInterrupted as stop:
            raise TreatInterrupted(when, stop.terminated) from None

    before = scanned(model, "before")
    spec = swap_spec(method)
    if spec:
        result = swap_failing(model, before, spec, batches[0])
    elif method == "regrama":
        links = topology(model, batches[0])
        scores = measure_grama(
            model, batches, links, loss_fn=loss_fn, mode=config.mode, seed=config.seed
        )
        result = recycle(
            model, before, method=method, tau=dormant_tau, links=links, grad_scores=scores
        )
    else:
        result = recycle(model, before, batches[0], tau=dormant_tau)
    after = scanned(result.model, "after")
    change = output_change(model, result.model, batches)
    outcome = assess(result, after, batches)
    return Treatment(method, before, after, result, change, outcome, len(batches))


__all__ = [
    "TREATMENTS",
    "TreatInterrupted",
    "Treatment",
    "check_method",
    "run_treatment",
    "swap_spec",
]
