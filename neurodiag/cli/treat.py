"""``neurodiag treat``: scan, recycle (ReDo) the dead units, re-scan on the same batches, show
before and after, say what stayed dead and why, and write the treated state_dict."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from neurodiag.atomic import replacing
from neurodiag.cli.common import (
    METRICS_PANEL,
    OUTPUT_PANEL,
    BatchSizeOpt,
    DataOpt,
    DebugOpt,
    Device,
    DeviceOpt,
    EpsOpt,
    InputShapeOpt,
    NumBatchesOpt,
    SeedOpt,
    TargetOpt,
    TauOpt,
    WeightsOpt,
    app,
    exit_with,
    in_range,
    interrupted_code,
    is_rank_zero,
    materialise_batches,
    refuse_overwriting_inputs,
    signals_deferred,
    stopped_by,
    user_errors,
    write_text,
)
from neurodiag.config import DEFAULT_EPS, DEFAULT_TAU
from neurodiag.errors import NeurodiagError
from neurodiag.report.verdict_text import plural

if TYPE_CHECKING:
    from neurodiag.report.model import Report
    from neurodiag.treat.recycle import Outcome


@app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag treat model.py --weights ckpt.pt --data data.yaml --output treated.pt\n\n"
    "neurodiag treat model.py --data data.yaml --dormant-tau 0.1 --output treated.pt"
)
def treat(
    model: Annotated[
        str,
        typer.Argument(
            help="file.py, file.py:factory or package.module:attr (the file is executed).",
            metavar="MODEL",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            rich_help_panel=OUTPUT_PANEL,
            metavar="NEW.pt",
            help="Write the treated state_dict here (loads with weights_only=True).",
        ),
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            rich_help_panel=METRICS_PANEL,
            metavar="METHOD",
            help="redo: fresh incoming weights and zeroed outgoing ones for dead units; "
            "regrama: units whose pre-activation gets (almost) no gradient, fresh incoming "
            "weights and small non-zero outgoing ones; "
            "swap:SPEC: the error sites' activation replaced by SPEC (e.g. swap:bern9), fitted "
            "to the old one; NEW.pt.swap.json holds what rebuilds it.",
        ),
    ] = "redo",
    dormant_tau: Annotated[
        float | None,
        typer.Option(
            "--dormant-tau",
            callback=in_range(),
            rich_help_panel=METRICS_PANEL,
            metavar="TAU",
            help="redo: also recycle τ-dormant units (normalised score ≤ TAU), as ReDo does; "
            "regrama: the threshold on the gradient score (default 0.01).",
        ),
    ] = None,
    data: DataOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    max_batches: NumBatchesOpt = None,
    input_shape: InputShapeOpt = None,
    target: TargetOpt = None,
    eps: EpsOpt = DEFAULT_EPS,
    tau: TauOpt = DEFAULT_TAU,
    debug: DebugOpt = False,
) -> None:
    """Recycle the dead units of MODEL (ReDo), prove it with a re-scan, write NEW.pt."""
    import torch

    from neurodiag.cli.runner import load_model_and_data
    from neurodiag.config import ScanConfig
    from neurodiag.scan import ScanInterrupted
    from neurodiag.scan import scan as run_scan
    from neurodiag.treat.gradients import measure_grama
    from neurodiag.treat.proof import assess, before_after, output_change
    from neurodiag.treat.recycle import recycle, swap_failing
    from neurodiag.treat.topology import topology

    with user_errors(debug):
        swap_spec = method.partition(":")[2] if method.startswith("swap:") else None
        if method not in ("redo", "regrama") and not swap_spec:
            raise NeurodiagError(
                f"--method {method!r}: use redo, regrama or swap:SPEC (e.g. swap:bern9)"
            )
        if swap_spec:  # a bad SPEC fails now, not after the scan (or never: no failing site)
            from neurodiag.activations.specs import parse_spec

            parse_spec(swap_spec)
        swap_file = Path(f"{output}.swap.json") if swap_spec else None
        refuse_overwriting_inputs(
            {"--output": output, "--output's .swap.json": swap_file},
            model=model,
            data=data,
            weights=weights,
        )
        if not output.parent.is_dir():  # before minutes of scanning, not after
            raise NeurodiagError(f"--output {output}: the folder {output.parent} does not exist")
        loaded, source = load_model_and_data(
            model,
            data=data,
            weights=weights,
            device=device,
            seed=seed,
            batch_size=batch_size,
            max_batches=max_batches,
            input_shape=input_shape,
            target=target,
        )
        batches = materialise_batches(source.batches, "treat")
        if not batches:
            raise NeurodiagError("the data gave no batch to scan")
        config = ScanConfig(eps=eps, tau=tau, seed=seed if seed is not None else 0)
        names = {"model_name": loaded.name, "data_name": source.description}
        loss_fn = loaded.hook("loss_fn")

        def scan_or_exit(model: Any, when: str) -> Report:
            """Scan; Ctrl-C/SIGTERM: one line and 130/143, nothing written."""
            try:
                return run_scan(model, batches, config, loss_fn=loss_fn, **names)
            except ScanInterrupted as stop:
                raise exit_with(
                    f"{stopped_by(stop.terminated)} during the scan {when} treating; "
                    f"{output} was not written",
                    interrupted_code(stop.terminated),
                ) from None

        before = scan_or_exit(loaded.model, "before")
        if swap_spec:
            result = swap_failing(loaded.model, before, swap_spec, batches[0])
            rebuild = {"spec": swap_spec, "sites": [t.site for t in result.treated]}
            write_text(Path(f"{output}.swap.json"), json.dumps(rebuild, indent=2) + "\n")
        elif method == "regrama":  # G measured on every scanned batch, with the scan's loss
            links = topology(loaded.model, batches[0])
            scores = measure_grama(
                loaded.model, batches, links, loss_fn=loss_fn, mode=config.mode, seed=config.seed
            )
            result = recycle(
                loaded.model, before, method=method, tau=dormant_tau, links=links,
                grad_scores=scores,
            )  # fmt: skip
        else:
            result = recycle(loaded.model, before, batches[0], tau=dormant_tau)
        after = scan_or_exit(result.model, "after")
        change = output_change(loaded.model, result.model, batches)
        outcome = assess(result, after, batches)
        try:
            with signals_deferred(), replacing(output) as handle:
                torch.save(result.model.state_dict(), handle)
        except (OSError, RuntimeError) as exc:  # torch.save raises RuntimeError for some paths
            raise NeurodiagError(f"cannot write {output}: {exc}") from exc
        if not is_rank_zero():
            return
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
        for heading in ("site", "neurons", "dead % before", "dead % after", "recycled", "note"):
            table.add_column(heading, justify="left" if heading in ("site", "note") else "right")
        for row in before_after(before, after, result):
            table.add_row(
                row["site"],
                f"{row['neurons']}",
                f"{row['dead_pct_before']:.1f}",
                "–" if row["dead_pct_after"] is None else f"{row['dead_pct_after']:.1f}",
                f"{row['recycled']}",
                row["note"],
            )
        console = Console(highlight=False)
        console.print(table)
        console.print(
            f"largest output change on the {len(batches)} scanned batches: {change:.2e}; "
            f"wrote {output}",
            markup=False,
        )
        verb = "swapped" if swap_spec else "recycled"
        console.print(summary_line(outcome, verb), markup=False)
        hint = next_step(outcome, model, data=data, weights=weights, input_shape=input_shape)
        if hint:
            console.print(hint, markup=False)


def summary_line(outcome: Outcome, verb: str = "recycled") -> str:
    """Units treated, then what the re-scan still finds dead and, where recognised, why."""
    from neurodiag.treat.recycle import COLLAPSED, UNTREATED

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
    from neurodiag.treat.recycle import COLLAPSED

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
