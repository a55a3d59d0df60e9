"""``neurodiag scan``: parse options, load model and data, call ``neurodiag.scan``, render."""

from __future__ import annotations

from typing import Annotated

import typer

from neurodiag.cli.common import (
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
    FlagGatesOpt,
    FormatOpt,
    ForwardOnlyOpt,
    IncludeOpt,
    InputShapeOpt,
    Mode,
    ModeOpt,
    NumBatchesOpt,
    OnlyFlaggedOpt,
    OutputFormat,
    OutputOpt,
    PlotOpt,
    ProgressOpt,
    RankMaxNeuronsOpt,
    RankOpt,
    SeedOpt,
    TargetOpt,
    TauOpt,
    TimeoutOpt,
    TopOpt,
    WeightsOpt,
    app,
    emit,
    exit_with,
    interrupted_code,
    refuse_overwriting_inputs,
    save_scan_plot,
    stopped_by,
    user_errors,
    validate_plot,
)
from neurodiag.config import DEFAULT_EPS, DEFAULT_RANK_MAX_NEURONS, DEFAULT_TAU


@app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag scan sample_models/plain_mlp.py --data sklearn:digits\n\n"
    "neurodiag scan model.py:build --weights ckpt.pt --data data.yaml --top 10\n\n"
    "neurodiag scan model.py --input-shape 3,32,32 -f html -o report.html\n\n"
    "Severity: README 'Reading a report'; data specs: docs/scan.md; columns: docs/metrics.md."
)
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
    eps: EpsOpt = DEFAULT_EPS,
    tau: TauOpt = DEFAULT_TAU,
    dead_window: DeadWindowOpt = DeadWindow.scan,
    mode: ModeOpt = Mode.eval,
    include: IncludeOpt = [],  # noqa: B006 - typer needs a literal default
    exclude: ExcludeOpt = [],  # noqa: B006
    feature_dim: FeatureDimOpt = [],  # noqa: B006
    flag_gates: FlagGatesOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    only_flagged: OnlyFlaggedOpt = False,
    top: TopOpt = None,
    output: OutputOpt = None,
    debug: DebugOpt = False,
    progress: ProgressOpt = True,
    plot: PlotOpt = None,
    forward_only: ForwardOnlyOpt = False,
    rank: RankOpt = False,
    rank_max_neurons: RankMaxNeuronsOpt = DEFAULT_RANK_MAX_NEURONS,
) -> None:
    """Scan every activation site of MODEL and report dead/dormant neurons and gradient flow."""
    from neurodiag.cli.runner import scan_config, scan_from_options
    from neurodiag.scan import ScanInterrupted

    with user_errors(debug):
        refuse_overwriting_inputs(
            {"--output": output, "--plot": plot}, model=model, data=data, weights=weights
        )
        validate_plot(plot)
        try:
            report = scan_from_options(
                model,
                scan_config(
                    eps=eps,
                    tau=tau,
                    dead_window=dead_window,
                    mode=mode,
                    include=include,
                    exclude=exclude,
                    feature_dim=feature_dim,
                    max_batches=max_batches,
                    seed=seed,
                    timeout=timeout,
                    forward_only=forward_only,
                    flag_gates=flag_gates,
                ).with_options(rank=rank, rank_max_neurons=rank_max_neurons),
                data=data,
                weights=weights,
                device=device,
                batch_size=batch_size,
                input_shape=input_shape,
                target=target,
                progress=progress,
            )
        except ScanInterrupted as stop:
            emit(stop.report.shown(only_flagged=only_flagged, top=top), fmt, output)
            what = stopped_by(stop.terminated)
            raise exit_with(
                f"{what}; the report is partial", interrupted_code(stop.terminated)
            ) from None
        emit(report.shown(only_flagged=only_flagged, top=top), fmt, output)
        save_scan_plot(report, plot)
