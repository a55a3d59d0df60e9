"""``neurodiag compare``: the baseline vs activation variants, scanned or briefly trained alike."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from neurodiag.cli.common import (
    OUTPUT_PANEL,
    TRAINING_PANEL,
    BatchSizeOpt,
    DataOpt,
    DeadWindow,
    DeadWindowOpt,
    DebugOpt,
    Device,
    DeviceOpt,
    EpsOpt,
    FormatOpt,
    InputShapeOpt,
    Mode,
    ModeOpt,
    NumBatchesOpt,
    OutputFormat,
    OutputOpt,
    ProgressOpt,
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
    piped_width,
    print_or_write,
    progress_bar,
    refuse_overwriting_inputs,
    stopped_by,
    user_errors,
    validate_plot,
)
from neurodiag.config import DEFAULT_EPS, DEFAULT_TAU
from neurodiag.errors import NeurodiagError

#: Training on synthetic inputs (no ``--data``, no ``make_data()``) fits noise with a surrogate
#: loss: a loss or accuracy from that would mislead, so compare refuses (issue 26).
TRAINS_ON_NOISE = (
    "compare trains on your data: give --data (sklearn:NAME, a YAML, tensor files, "
    "loaders.py:fn) or a make_data() in the model file, or drop --epochs/--steps to scan only "
    "(synthetic inputs and a surrogate loss would train on noise)"
)


def table_width(output: Path | None) -> int | None:
    """The table's width, as scan's: the terminal's, else ``$COLUMNS`` when piped, else
    natural (a file never wraps)."""
    import sys

    from rich.console import Console

    if output is not None:
        return None
    return Console().width if sys.stdout.isatty() else piped_width()


def is_synthetic(source: object) -> bool:
    """Whether a DataSource holds the synthetic batches inferred from the model."""
    from neurodiag.loading.synthetic import SyntheticBatches

    return isinstance(getattr(source, "batches", None), SyntheticBatches)


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"
    step = "step"


class Init(str, Enum):
    """``--init``: neurodiag.compare.training.INITS (a test keeps them equal; importing it
    here would import torch for ``--help``)."""

    model = "model"
    he = "he"
    lecun = "lecun"
    xavier = "xavier"
    torch = "torch"


@app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag compare sample_models/plain_mlp.py --data sklearn:digits -a bern9:bn -a gelu "
    "--epochs 5 --plot compare.png\n\n"
    "neurodiag compare model.py -a bern9 -a lrelu0.01 --epochs 0   (scan each variant only)\n\n"
    "python scripts/reproduce_paper.py   (the paper's variants on digits and MNIST-1D)"
)
def compare(
    model: Annotated[
        str,
        typer.Argument(
            help="file.py, file.py:factory or package.module:attr (the file is executed).",
            metavar="MODEL",
            show_default=False,
        ),
    ],
    activation: Annotated[
        list[str],
        typer.Option(
            "--activation",
            "-a",
            rich_help_panel="Variants",
            metavar="SPEC",
            help="Activation spec to compare with the model as it is: relu, lrelu0.01, gelu, "
            "selu, elu, silu, tanh, sigmoid, nrelu0.1, golu, bern9, bern15, "
            "bern9:delta=0.01:range=-5,5; ':bn' on any of them adds a BatchNorm in front "
            "(selu:bn, bern9:bn), ':res' skip connections (relu:res). Repeat for several.",
        ),
    ],
    data: DataOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    max_batches: NumBatchesOpt = None,
    input_shape: InputShapeOpt = None,
    target: TargetOpt = None,
    epochs: Annotated[
        int,
        typer.Option(
            "--epochs",
            min=0,
            rich_help_panel=TRAINING_PANEL,
            metavar="N",
            help="Training epochs (0: scan only).",
        ),
    ] = 0,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            rich_help_panel=TRAINING_PANEL,
            metavar="N",
            help="Stop after this many optimizer steps.",
        ),
    ] = None,
    optimizer: Annotated[
        Optimizer, typer.Option("--optimizer", rich_help_panel=TRAINING_PANEL, help="Optimizer.")
    ] = Optimizer.adam,
    lr: Annotated[
        float,
        typer.Option(
            "--lr",
            callback=in_range(finite=True),
            rich_help_panel=TRAINING_PANEL,
            metavar="LR",
            help="Learning rate.",
        ),
    ] = 1e-3,
    weight_decay: Annotated[
        float,
        typer.Option(
            "--weight-decay",
            callback=in_range(finite=True),
            rich_help_panel=TRAINING_PANEL,
            metavar="WD",
            help="Weight decay of the optimizer.",
        ),
    ] = 0.0,
    momentum: Annotated[
        float,
        typer.Option(
            "--momentum",
            callback=in_range(0.999),
            rich_help_panel=TRAINING_PANEL,
            metavar="M",
            help="SGD momentum.",
        ),
    ] = 0.0,
    schedule: Annotated[
        Schedule,
        typer.Option(
            "--schedule",
            rich_help_panel=TRAINING_PANEL,
            help="Learning-rate schedule over all steps: constant, cosine (to 0) or step "
            "(x0.1 at 50 % and 75 %).",
        ),
    ] = Schedule.constant,
    init: Annotated[
        Init,
        typer.Option(
            "--init",
            rich_help_panel=TRAINING_PANEL,
            help="Re-initialise Linear/Conv weights before the variants are made: model (as "
            "built), he (Kaiming-normal, zero bias), lecun (LeCun-normal, zero bias), xavier "
            "(Xavier-normal, zero bias), torch (PyTorch's default reset_parameters). One "
            "variant's own: SPEC:init=S, e.g. selu:init=lecun.",
        ),
    ] = Init.model,
    train_window: Annotated[
        bool,
        typer.Option(
            "--train-window/--no-train-window",
            rich_help_panel=TRAINING_PANEL,
            help="Also measure dead % over each epoch's training batches (the last epoch: the "
            "paper's Fig. 3 window) with neurodiag.Monitor.",
        ),
    ] = True,
    scan_batches: Annotated[
        int | None,
        typer.Option(
            "--scan-batches",
            min=1,
            rich_help_panel=TRAINING_PANEL,
            metavar="N",
            help="Scan each variant after each epoch on the first N training batches only "
            "(default: all of them); the training window still sees every step.",
        ),
    ] = None,
    holdout: Annotated[
        float,
        typer.Option(
            "--holdout",
            callback=in_range(0.9),
            rich_help_panel=TRAINING_PANEL,
            metavar="FRACTION",
            help="Fraction of samples held out for accuracy when training (0: none).",
        ),
    ] = 0.2,
    compiled_kernels: Annotated[
        bool,
        typer.Option(
            "--compiled-kernels",
            rich_help_panel=TRAINING_PANEL,
            help="Run Bernstein activations through torch.compile'd kernels shared by all "
            "layers of a shape (seconds to compile; eager if compiling fails).",
        ),
    ] = False,
    eps: EpsOpt = DEFAULT_EPS,
    tau: TauOpt = DEFAULT_TAU,
    dead_window: DeadWindowOpt = DeadWindow.scan,
    mode: ModeOpt = Mode.eval,
    per_site: Annotated[
        bool,
        typer.Option(
            "--per-site", rich_help_panel=OUTPUT_PANEL, help="Also every variant's sites."
        ),
    ] = False,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            rich_help_panel=OUTPUT_PANEL,
            metavar="FILE.png",
            help="PNG of the paper's five figures: min |σ'| by epoch (first, middle, last site) "
            "and by depth with δ̄, dead % by depth over the last epoch, first-site MAG, loss "
            "and accuracy by epoch.",
        ),
    ] = None,
    debug: DebugOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Compare MODEL with its activations swapped, on the same data, seed and initial weights."""
    from neurodiag.cli.runner import load_model_and_data
    from neurodiag.compare import compare as run_compare
    from neurodiag.compare.engine import CompareInterrupted
    from neurodiag.compare.render import render_comparison
    from neurodiag.compare.split import holdout_split

    with user_errors(debug):
        refuse_overwriting_inputs(
            {"--output": output, "--plot": plot}, model=model, data=data, weights=weights
        )
        validate_plot(plot)
        if not activation:
            raise NeurodiagError("give at least one --activation, e.g. --activation bern9")
        base_seed = seed if seed is not None else 0
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
        if (epochs or steps) and is_synthetic(source):
            raise NeurodiagError(TRAINS_ON_NOISE)
        train: list[object] = materialise_batches(source.batches, "compare")
        held_out = None
        if (epochs or steps) and holdout > 0:
            split = holdout_split(train, holdout, base_seed)
            if split is not None:
                train, held_out = split
        try:
            with progress_bar(None, progress and is_rank_zero(), "comparing") as advance:
                comparison = run_compare(
                    loaded.model,
                    train,
                    activation,
                    epochs=epochs,
                    steps=steps,
                    optimizer=optimizer.value,
                    lr=lr,
                    weight_decay=weight_decay,
                    momentum=momentum,
                    schedule=schedule.value,
                    init=init.value,
                    train_window=train_window,
                    # with training, --batch-size also reshuffles samples into new batches
                    batch_size=batch_size if (epochs or steps) else None,
                    seed=base_seed,
                    eval_data=held_out,
                    loss_fn=loaded.hook("loss_fn"),
                    data_name=source.description,
                    compiled_kernels=compiled_kernels,
                    scan_batches=scan_batches,
                    eps=eps,
                    tau=tau,
                    dead_window=dead_window.value,
                    mode=mode.value,
                    on_step=(
                        lambda p: advance(
                            p.done, p.total, f"{p.variant} · epoch {p.epoch} · {p.phase}"
                        )
                    )
                    if advance
                    else None,
                )
        except CompareInterrupted as stop:  # Ctrl-C / SIGTERM: show the variants that finished
            done = len(stop.comparison.variants)
            if done and is_rank_zero():
                text = render_comparison(
                    stop.comparison, fmt.value, per_site=per_site, width=table_width(output)
                )
                print_or_write(text, output)
            raise exit_with(
                f"{stopped_by(stop.terminated)}; the comparison above is partial ({done} of "
                f"{stop.planned} "
                "variants finished)",
                interrupted_code(stop.terminated),
            ) from None
        if not is_rank_zero():
            return
        text = render_comparison(
            comparison, fmt.value, per_site=per_site, width=table_width(output)
        )
        print_or_write(text, output)
        if plot is not None:
            from neurodiag.plots import plot_comparison

            plot_comparison(comparison, plot)
