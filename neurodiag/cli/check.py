"""``neurodiag check``: scan like ``neurodiag scan``, then gate on thresholds or a baseline.

Exit codes: 0 healthy (or baseline written), 1 a threshold violated / a regression, 2 bad input
(one line on stderr), 130 interrupted (no verdict). The measuring and judging live in
``neurodiag.scan`` and ``neurodiag.check``; this module only parses options and writes output.
Config files and the baseline are read before the scan, so a typo fails in milliseconds rather
than after a long scan.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console

from neurodiag.check import (
    DEFAULT_MAG_FACTOR,
    DEFAULT_TOLERANCE,
    CheckResult,
    compare_to_baseline,
    evaluate,
    load_baseline,
    load_thresholds,
    render_check,
    save_baseline,
)
from neurodiag.check.baseline import with_thresholds
from neurodiag.check.config import ThresholdConfig
from neurodiag.check.render_text import render_check_table, write_step_summary
from neurodiag.check.thresholds import DEFAULTS, SPECS, ThresholdSpec
from neurodiag.cli.common import (
    BASELINE_PANEL,
    OUTPUT_PANEL,
    THRESHOLDS_PANEL,
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
    ForwardOnlyOpt,
    IncludeOpt,
    InputShapeOpt,
    Mode,
    ModeOpt,
    NumBatchesOpt,
    OutputOpt,
    PlotOpt,
    ProgressOpt,
    RankMaxNeuronsOpt,
    RankOpt,
    SeedOpt,
    TargetOpt,
    TauOpt,
    TimeoutOpt,
    WeightsOpt,
    app,
    exit_with,
    in_range,
    interrupted_code,
    is_rank_zero,
    print_or_write,
    refuse_overwriting_inputs,
    save_scan_plot,
    stopped_by,
    user_errors,
    validate_plot,
    write_text,
)
from neurodiag.cli.runner import scan_config, scan_from_options
from neurodiag.config import DEFAULT_EPS, DEFAULT_RANK_MAX_NEURONS, DEFAULT_TAU
from neurodiag.errors import NeurodiagError
from neurodiag.report.model import Report
from neurodiag.scan import NONFINITE_LOSS, ScanInterrupted

EXIT_UNHEALTHY = 1


class CheckFormat(str, Enum):
    table = "table"
    json = "json"
    junit = "junit"
    github = "github"
    markdown = "markdown"
    csv = "csv"
    html = "html"


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        rich_help_panel=THRESHOLDS_PANEL,
        metavar="FILE",
        help="YAML thresholds file (thresholds/activations/sites); the tool.neurodiag "
        "table of the nearest pyproject.toml is read too.",
    ),
]
BaselineOpt = Annotated[
    Path | None,
    typer.Option(
        "--baseline",
        rich_help_panel=BASELINE_PANEL,
        metavar="FILE",
        help="Saved scan JSON: fail only on regressions against it (thresholds are not used).",
    ),
]
ToleranceOpt = Annotated[
    float,
    typer.Option(
        "--tolerance",
        callback=in_range(lower=0.0, finite=True),
        rich_help_panel=BASELINE_PANEL,
        metavar="POINTS",
        help="Baseline: allowed worsening of the % columns, in points.",
    ),
]
MagFactorOpt = Annotated[
    float,
    typer.Option(
        "--mag-factor",
        callback=in_range(lower=1.0, finite=True),
        rich_help_panel=BASELINE_PANEL,
        metavar="FACTOR",
        help="Baseline: allowed shrink factor of MAG.",
    ),
]
UpdateBaselineOpt = Annotated[
    bool,
    typer.Option(
        "--update-baseline",
        rich_help_panel=BASELINE_PANEL,
        help="Write this scan to the --baseline FILE and exit 0.",
    ),
]
CheckFormatOpt = Annotated[
    CheckFormat, typer.Option("--format", "-f", rich_help_panel=OUTPUT_PANEL, help="Output format.")
]
JunitOpt = Annotated[
    Path | None,
    typer.Option(
        "--junit-xml",
        rich_help_panel=OUTPUT_PANEL,
        metavar="FILE",
        help="Also write JUnit XML to FILE (whatever --format is).",
    ),
]


def _threshold_option(spec: ThresholdSpec) -> inspect.Parameter:
    """One ``--max-…``/``--min-…`` flag, from the statistic's declaration of its column."""
    side = "above" if spec.bound == "max" else "below"
    unit = " (percent, 0-100)" if spec.percent else ""
    default = DEFAULTS.get(spec.key)
    suffix = f" (default {default})" if default is not None else ""
    option = typer.Option(
        spec.flag,
        min=0 if spec.integer else None,
        callback=None if spec.integer else in_range(100.0 if spec.percent else None),
        help=f"Fail if a site's {spec.metric} is {side} this{unit}{suffix}.",
        show_default=False,
        rich_help_panel=THRESHOLDS_PANEL,
    )
    kind: Any = int | None if spec.integer else float | None
    return inspect.Parameter(
        spec.key,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind, option],
    )


def with_threshold_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one flag per declared threshold key; it receives them as ``thresholds``.

    A new statistic's threshold (``Column.threshold``) becomes a ``check`` flag with no edit here.
    """
    hints = get_type_hints(command, include_extras=True)
    params = [
        p.replace(annotation=hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY)
        if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or p.default is not p.empty
        else p.replace(annotation=hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name not in ("thresholds", "return")
    ]
    at = next(i for i, p in enumerate(params) if p.name == "config") + 1
    params[at:at] = [_threshold_option(spec) for spec in SPECS.values()]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        limits = {key: kwargs.pop(key, None) for key in SPECS}
        command(*args, **kwargs, thresholds=limits)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read the signature above, not the command's
    return wrapper


def emit_check(result: CheckResult, fmt: CheckFormat, output: Path | None) -> None:
    """Print (in colour on a terminal) or write the result in the chosen format."""
    if not is_rank_zero():
        return
    if output is None and fmt is CheckFormat.table and sys.stdout.isatty():
        render_check_table(result, Console(highlight=False))
        return
    print_or_write(render_check(result, fmt.value), output)


@app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag check sample_models/plain_mlp.py --data sklearn:digits --max-dead-pct 20\n\n"
    "neurodiag check model.py --config ci.yaml --format github --junit-xml report.xml\n\n"
    "neurodiag check model.py --baseline base.json --update-baseline   (first run)"
)
@with_threshold_flags
def check(
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
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            rich_help_panel=THRESHOLDS_PANEL,
            help="Pass a check that found no activation site (exit 0).",
        ),
    ] = False,
    config: ConfigOpt = None,
    baseline: BaselineOpt = None,
    tolerance: ToleranceOpt = DEFAULT_TOLERANCE,
    mag_factor: MagFactorOpt = DEFAULT_MAG_FACTOR,
    update_baseline: UpdateBaselineOpt = False,
    fmt: CheckFormatOpt = CheckFormat.table,
    output: OutputOpt = None,
    junit_xml: JunitOpt = None,
    debug: DebugOpt = False,
    progress: ProgressOpt = True,
    plot: PlotOpt = None,
    forward_only: ForwardOnlyOpt = False,
    rank: RankOpt = False,
    rank_max_neurons: RankMaxNeuronsOpt = DEFAULT_RANK_MAX_NEURONS,
    thresholds: dict[str, Any] | None = None,
) -> None:
    """Scan MODEL like `scan`, then exit 1 if a site breaks a threshold (or regressed).

    Threshold precedence per site: first matching `sites` glob > `activations` entry > flags >
    --config thresholds > pyproject.toml thresholds > defaults (max-nonfinite 0).
    """
    flags = dict(thresholds or {})
    with user_errors(debug):
        if update_baseline and baseline is None:
            raise NeurodiagError("--update-baseline needs --baseline FILE to write to")
        # --update-baseline writes --baseline (its intended use); without it --baseline is read
        written = baseline if update_baseline else None
        refuse_overwriting_inputs(
            {
                "--baseline": written,
                "--output": output,
                "--junit-xml": junit_xml,
                "--plot": plot,
            },
            model=model,
            data=data,
            weights=weights,
            inputs={"--config": config, "--baseline": None if update_baseline else baseline},
        )
        validate_plot(plot)
        given = [key for key, value in flags.items() if value is not None]
        # with --baseline, thresholds gate too when asked for (flags or --config): both must pass
        wants_limits = baseline is None or bool(given) or config is not None
        limits = load_thresholds(config, flags) if wants_limits else None
        if forward_only:
            _check_forward_only(limits, baseline is not None)
        old = load_baseline(baseline) if baseline is not None and not update_baseline else None
        # Ctrl-C gives no verdict: a scan cut short by the user must not pass (or fail) a gate.
        # A --timeout was asked for, so the batches seen get a verdict (marked partial).
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
            what = stopped_by(stop.terminated)
            raise exit_with(
                f"{what}; the scan did not finish, so there is no verdict",
                interrupted_code(stop.terminated),
            ) from None
        if not report.rows and not allow_empty:
            raise NeurodiagError(
                "checked no activation site (none found, or --include/--exclude left none), so "
                "there is nothing to gate; fix the model or the globs, or pass --allow-empty"
            )
        _refuse_meaningless(report, update_baseline and baseline is not None, baseline)
        save_scan_plot(report, plot)
        if update_baseline and baseline is not None:
            if is_rank_zero():
                save_baseline(report, baseline)
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"wrote baseline {baseline} ({len(report.rows)} sites)", markup=False
            )
            return
        if old is not None and baseline is not None:
            result = compare_to_baseline(
                report, old, tolerance=tolerance, mag_factor=mag_factor, name=str(baseline)
            )
            if limits is not None:
                result = with_thresholds(result, evaluate(report, limits))
        else:
            result = evaluate(report, limits)
        emit_check(result, fmt, output)
        if junit_xml is not None and is_rank_zero():
            write_text(junit_xml, render_check(result, "junit"), "--junit-xml")
        if fmt is CheckFormat.github and is_rank_zero():
            _append_step_summary(result)
    if not result.ok:
        raise typer.Exit(EXIT_UNHEALTHY)


def _refuse_meaningless(report: Report, updating: bool, baseline: Path | None) -> None:
    """No verdict (and no baseline) from a scan that measured nothing meaningful: a NaN or
    infinite loss (every label ignored, say), or a partial scan written as a baseline."""
    bad_loss = [note for note in report.header.notes if note.startswith(NONFINITE_LOSS)]
    if bad_loss:
        raise NeurodiagError(f"{bad_loss[0]}; a check cannot pass on it")
    if updating and report.header.partial:
        raise NeurodiagError(
            f"the scan is partial (stopped by --timeout after {report.header.batches} "
            f"batch(es)), so it is not written as a baseline; drop or raise --timeout "
            f"({baseline} was left as it was)"
        )


def _append_step_summary(result: CheckResult) -> None:
    """``$GITHUB_STEP_SUMMARY`` is appended to (GitHub's contract); when it cannot be (a folder,
    no permission, a full disk) that is one warning line: the verdict already printed stands."""
    try:
        write_step_summary(result)
    except OSError as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"warning: cannot append to $GITHUB_STEP_SUMMARY "
            f"{exc.filename or ''!s}: {exc.strerror or exc}; the verdict stands",
            markup=False,
        )


def _check_forward_only(limits: ThresholdConfig | None, with_baseline: bool) -> None:
    """--forward-only measures no gradient: refuse gates that would read one."""
    if with_baseline:
        raise NeurodiagError(
            "--forward-only cannot be combined with --baseline: a baseline compares the "
            "gradient columns too"
        )
    gradient_keys = {key for key, spec in SPECS.items() if spec.gradient} & (
        limits.keys_in_use() if limits else set()
    )
    if gradient_keys:
        names = ", ".join(sorted(key.replace("_", "-") for key in gradient_keys))
        raise NeurodiagError(
            f"--forward-only measures no gradients, but {names} is set; drop --forward-only "
            "or that threshold"
        )
