"""``neurodiag scan``: parse options, load model and data, call ``neurodiag.scan``, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from neurodiag.cli.common import (
    EXIT_INTERRUPTED,
    BatchSizeOpt,
    DataOpt,
    DeadWindow,
    DeadWindowOpt,
    DebugOpt,
    Device,
    DeviceOpt,
    EpsOpt,
    ExcludeOpt,
    FeatureDimOpt,
    FormatOpt,
    IncludeOpt,
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
    TimeoutOpt,
    WeightsOpt,
    _count,
    _fail,
    app,
    emit,
    init_distributed,
    is_rank_zero,
    parse_feature_dims,
    parse_shape,
    progress_bar,
    resolve_device,
    user_errors,
)


@app.command()
def scan(
    model: Annotated[
        str,
        typer.Argument(
            help="file.py, file.py:factory or package.module:attr (the file is executed).",
            metavar="MODEL",
            show_default=False,
        ),
    ],
    data: DataOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    max_batches: NumBatchesOpt = None,
    timeout: TimeoutOpt = None,
    input_shape: InputShapeOpt = None,
    target: TargetOpt = None,
    eps: EpsOpt = 1e-3,
    tau: TauOpt = 0.1,
    dead_window: DeadWindowOpt = DeadWindow.scan,
    mode: ModeOpt = Mode.eval,
    include: IncludeOpt = [],  # noqa: B006 - typer needs a literal default
    exclude: ExcludeOpt = [],  # noqa: B006
    feature_dim: FeatureDimOpt = [],  # noqa: B006
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    debug: DebugOpt = False,
    progress: ProgressOpt = True,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="PNG of dead % and MAG by depth (matplotlib).")
    ] = None,
) -> None:
    """Scan every activation site of MODEL and report dead/dormant neurons and gradient flow."""
    from neurodiag.loading import load_data, load_model
    from neurodiag.scan import ScanInterrupted
    from neurodiag.scan import scan as run_scan

    with user_errors(debug):
        torch_device = init_distributed(resolve_device(device))
        # Seed before building the model: a model file that initialises randomly is then the
        # same model on every run and on every rank of a torchrun job.
        torch.manual_seed(seed if seed is not None else 0)
        loaded = load_model(model, weights=str(weights) if weights else None, device=torch_device)
        source = load_data(
            data,
            model=loaded.model,
            loaded=loaded,
            batch_size=batch_size,
            num_batches=max_batches,
            seed=seed,
            input_shape=parse_shape(input_shape),
            target=target,
        )
        total = _count(source.batches, max_batches)
        try:
            with progress_bar(total, progress and is_rank_zero()) as on_batch:
                report = run_scan(
                    loaded.model,
                    source.batches,
                    loss_fn=loaded.hook("loss_fn"),
                    eps=eps,
                    tau=tau,
                    dead_window=dead_window.value,
                    mode=mode.value,
                    include=include,
                    exclude=exclude,
                    feature_dims=parse_feature_dims(feature_dim),
                    max_batches=max_batches,
                    timeout_s=timeout,
                    seed=seed if seed is not None else 0,
                    on_batch=on_batch,
                    model_name=loaded.name,
                    data_name=source.description,
                )
        except ScanInterrupted as stop:
            emit(stop.report, fmt, output)
            raise _fail("interrupted; the report above is partial", EXIT_INTERRUPTED) from None
        emit(report, fmt, output)
        if plot is not None and is_rank_zero():
            from neurodiag.plots import plot_scan

            plot_scan(report, plot)
