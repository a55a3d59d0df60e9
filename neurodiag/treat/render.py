"""How a ``Treatment`` reads: the before/after table per site, the summary of what stayed dead
and why, and the next step to try (``neurodiag treat`` prints these)."""

from __future__ import annotations

import shlex
from pathlib import Path

from rich import box
from rich.table import Table

from neurodiag.report.verdict_text import plural
from neurodiag.treat.pipeline import Treatment
from neurodiag.treat.proof import before_after
from neurodiag.treat.recycle import COLLAPSED, UNTREATED, Outcome

_HEADINGS = ("site", "neurons", "dead % before", "dead % after", "recycled", "note")


def treatment_table(treatment: Treatment) -> Table:
    """Per site: neurons, dead % before and after, units treated, why a site was left alone."""
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for heading in _HEADINGS:
        table.add_column(heading, justify="left" if heading in ("site", "note") else "right")
    for row in before_after(treatment.before, treatment.after, treatment.result):
        table.add_row(
            row["site"],
            f"{row['neurons']}",
            f"{row['dead_pct_before']:.1f}",
            "–" if row["dead_pct_after"] is None else f"{row['dead_pct_after']:.1f}",
            f"{row['recycled']}",
            row["note"],
        )
    return table


def summary_line(outcome: Outcome, verb: str = "recycled") -> str:
    """Units treated, then what the re-scan still finds dead and, where recognised, why."""
    head = f"{verb} {plural(outcome.recycled, 'unit')} at {plural(outcome.treated_sites, 'site')}"
    still = outcome.still_dead
    limit = f"≥ {outcome.dead_pct:g} % dead"
    if not still:
        return f"{head}; after treatment no site is {limit}"
    text = f"{head}; after treatment {len(still)} of {outcome.sites} sites are still {limit}"
    causes = []
    collapsed = len(outcome.with_cause(COLLAPSED))
    if collapsed:
        causes.append(
            f"{collapsed} because the layer's input has collapsed (the inputs of all samples "
            f"point nearly the same way: mean pairwise cosine ≥ {outcome.collapse:g}), so "
            "fresh units die again and recycling cannot fix that"
        )
    untreated = len(outcome.with_cause(UNTREATED))
    if untreated:
        causes.append(f"{untreated} left untreated (see note)")
    unexplained = len(outcome.with_cause(""))
    if unexplained and causes:
        causes.append(f"{unexplained} for no cause neurodiag recognises")
    return text + (": " + "; ".join(causes) if causes else " (no cause neurodiag recognises)")


def next_step(
    outcome: Outcome,
    model: str,
    *,
    data: str | None = None,
    weights: Path | None = None,
    input_shape: str | None = None,
) -> str | None:
    """What to try when sites stay dead: an activation that cannot die, compared on the same
    model and data; for a collapsed input also a change of the architecture."""
    if not outcome.still_dead:
        return None
    words = ["neurodiag", "compare", model]
    for flag, value in (("-w", weights), ("-d", data), ("--input-shape", input_shape)):
        if value is not None:
            words += [flag, str(value)]
    command = " ".join(shlex.quote(w) for w in [*words, "-a", "bern9:bn"])
    text = f"next: {command} (an activation that cannot die"
    if outcome.with_cause(COLLAPSED):
        return text + "), or add BatchNorm or a residual branch to those layers"
    return text + ")"


def report_lines(
    treatment: Treatment,
    output: Path,
    model: str,
    *,
    data: str | None = None,
    weights: Path | None = None,
    input_shape: str | None = None,
) -> list[str]:
    """The lines under the table: the output change and the file written, the summary, the
    next step (repeating the model, data, weights and input shape given)."""
    lines = [
        f"largest output change on the {treatment.batches} scanned batches: "
        f"{treatment.change:.2e}; wrote {output}",
        summary_line(treatment.outcome, "swapped" if treatment.swap_spec else "recycled"),
    ]
    hint = next_step(treatment.outcome, model, data=data, weights=weights, input_shape=input_shape)
    return lines if hint is None else [*lines, hint]
