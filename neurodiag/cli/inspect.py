"""``neurodiag inspect``: load the model (and optimizer state, initial weights), call
``neurodiag.inspect``, render. No data, no forward."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from neurodiag.cli import common, options
from neurodiag.inspect.report import INSPECT_RENDERERS
from neurodiag.loading.overwrite import refuse_overwriting_inputs


def _gate(flag: str, help: str) -> Any:
    return typer.Option(flag, help=help, min=0, max=100)


@common.app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag inspect sample_models/plain_mlp.py\n\n"
    "neurodiag inspect model.py --weights ckpt.pt --optimizer opt.pt --initial init.pt -f json\n\n"
    "neurodiag inspect model.py --weights ckpt.pt --max-dead-rows-pct 5   # CI: exit 1 above\n\n"
    "Columns, definitions and tolerances: docs/inspect.md."
)
def inspect(
    model: options.ModelArg,
    weights: options.WeightsOpt = None,
    optimizer: Annotated[Path | None, options.model_opt("--optimizer", metavar="OPT_STATE.pt",
        help="optimizer.state_dict() of an Adam-family optimizer (weights_only): ν-dead rows.")
    ] = None,
    initial: Annotated[Path | None, options.model_opt("--initial", metavar="CKPT",
        help="State dict before training (weights_only): weight_distance.")] = None,
    max_dead_rows_pct: Annotated[float | None, _gate("--max-dead-rows-pct",
        "Exit 1 if a layer has more dead rows (%).")] = None,
    max_duplicate_rows_pct: Annotated[float | None, _gate("--max-duplicate-rows-pct",
        "Exit 1 if a layer has more duplicate rows (%).")] = None,
    max_nu_dead_rows_pct: Annotated[float | None, _gate("--max-nu-dead-rows-pct",
        "Exit 1 if a layer has more ν-dead rows (%; needs --optimizer).")] = None,
    fmt: Annotated[str, options.format_option(INSPECT_RENDERERS)] = "table",
    output: options.OutputOpt = None,
    debug: options.DebugOpt = False,
) -> None:  # fmt: skip
    """Weight-only health of MODEL's Linear/Conv layers: dead, duplicate, ν-dead rows; no data."""
    from neurodiag.inspect.files import inspect_files
    from neurodiag.inspect.gate import violations
    from neurodiag.inspect.report import render, table

    with common.user_errors(debug):
        inputs = {"--optimizer": optimizer, "--initial": initial}
        refuse_overwriting_inputs({"--output": output}, model=model, weights=weights, inputs=inputs)
        frame = inspect_files(model, weights=weights, optimizer=optimizer, initial=initial)
        common.emit(
            fmt, output, lambda w: render(frame, fmt, width=w), lambda c: c.print(table(frame))
        )
        limits = {
            "max_dead_rows_pct": max_dead_rows_pct,
            "max_duplicate_rows_pct": max_duplicate_rows_pct,
            "max_nu_dead_rows_pct": max_nu_dead_rows_pct,
        }
        broken = violations(frame, limits)
    for line in broken:
        print(f"✗ {line}", file=sys.stderr)
    if broken:
        raise typer.Exit(1)
