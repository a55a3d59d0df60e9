"""``neurodiag inspect``: load the model (and optimizer state, initial weights), call
``neurodiag.inspect``, render. No data, no forward."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from neurodiag.cli.common import (
    MODEL_PANEL,
    DebugOpt,
    FormatOpt,
    OutputFormat,
    OutputOpt,
    WeightsOpt,
    app,
    piped_width,
    print_or_write,
    refuse_overwriting_inputs,
    user_errors,
)


@app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag inspect sample_models/plain_mlp.py\n\n"
    "neurodiag inspect model.py --weights ckpt.pt --optimizer opt.pt --initial init.pt -f json\n\n"
    "neurodiag inspect model.py --weights ckpt.pt --max-dead-rows-pct 5   # CI: exit 1 above\n\n"
    "Columns, definitions and tolerances: docs/inspect.md."
)
def inspect(
    model: Annotated[
        str,
        typer.Argument(
            help="file.py, file.py:factory or package.module:attr (the file is executed).",
            metavar="MODEL",
            show_default=False,
        ),
    ],
    weights: WeightsOpt = None,
    optimizer: Annotated[
        Path | None,
        typer.Option(
            "--optimizer",
            rich_help_panel=MODEL_PANEL,
            metavar="OPT_STATE.pt",
            help="optimizer.state_dict() of an Adam-family optimizer (weights_only): ν-dead rows.",
        ),
    ] = None,
    initial: Annotated[
        Path | None,
        typer.Option(
            "--initial",
            rich_help_panel=MODEL_PANEL,
            metavar="CKPT",
            help="State dict before training (weights_only): weight_distance.",
        ),
    ] = None,
    max_dead_rows_pct: Annotated[
        float | None,
        typer.Option(
            "--max-dead-rows-pct", help="Exit 1 if a layer has more dead rows (%).", min=0, max=100
        ),
    ] = None,
    max_duplicate_rows_pct: Annotated[
        float | None,
        typer.Option(
            "--max-duplicate-rows-pct",
            help="Exit 1 if a layer has more duplicate rows (%).",
            min=0,
            max=100,
        ),
    ] = None,
    max_nu_dead_rows_pct: Annotated[
        float | None,
        typer.Option(
            "--max-nu-dead-rows-pct",
            help="Exit 1 if a layer has more ν-dead rows (%; needs --optimizer).",
            min=0,
            max=100,
        ),
    ] = None,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Weight-only health of MODEL's Linear/Conv layers: dead, duplicate, ν-dead rows; no data."""
    import torch
    from rich.console import Console

    from neurodiag.inspect import inspect as run_inspect
    from neurodiag.inspect import render
    from neurodiag.inspect.gate import violations
    from neurodiag.inspect.layers import optimizer_state_dict
    from neurodiag.inspect.report import table
    from neurodiag.loading import load_model
    from neurodiag.loading.weights import extract_state_dict, read_checkpoint

    with user_errors(debug):
        refuse_overwriting_inputs(
            {"--output": output},
            model=model,
            weights=weights,
            inputs={"--optimizer": optimizer, "--initial": initial},
        )
        opt_state = (
            optimizer_state_dict(
                read_checkpoint(str(optimizer), what="--optimizer file"),
                where=f"--optimizer file '{optimizer}'",
            )
            if optimizer
            else None
        )
        start = (
            extract_state_dict(read_checkpoint(str(initial), what="--initial file"), str(initial))
            if initial
            else None
        )
        # a model file that initialises randomly builds the same model on every run
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            loaded = load_model(model, weights=str(weights) if weights else None, device="cpu")
        frame = run_inspect(loaded.model, optimizer=opt_state, initial=start)
        if output is None and fmt is OutputFormat.table and sys.stdout.isatty():
            Console(highlight=False).print(table(frame))
        else:
            width = piped_width() if output is None else None
            print_or_write(render(frame, fmt.value, width=width), output)
        broken = violations(
            frame,
            {
                "max_dead_rows_pct": max_dead_rows_pct,
                "max_duplicate_rows_pct": max_duplicate_rows_pct,
                "max_nu_dead_rows_pct": max_nu_dead_rows_pct,
            },
        )
    for line in broken:
        print(f"✗ {line}", file=sys.stderr)
    if broken:
        raise typer.Exit(1)
