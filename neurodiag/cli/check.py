"""``neurodiag check``: scan like ``neurodiag scan``, then gate on thresholds or a baseline with
the library's policy (``neurodiag.check.policy``: exit 0 healthy or baseline written, 1 a broken
threshold or a regression); 2 bad input (one line on stderr), 130 interrupted (no verdict)."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from neurodiag.check import baseline as baselines
from neurodiag.check import policy, render, render_text, thresholds
from neurodiag.cli import common, options
from neurodiag.loading.overwrite import refuse_overwriting_inputs

limit_opt = functools.partial(options.opt, panel=common.THRESHOLDS_PANEL)
baseline_opt = functools.partial(options.opt, panel=common.BASELINE_PANEL)


def threshold_option(spec: thresholds.ThresholdSpec) -> inspect.Parameter:
    """One ``--max-…``/``--min-…`` flag, from the statistic's declaration of its column."""
    side = "above" if spec.bound == "max" else "below"
    unit = " (percent, 0-100)" if spec.percent else ""
    default = thresholds.DEFAULTS.get(spec.key)
    suffix = f" (default {default})" if default is not None else ""
    callback = None if spec.integer else options.in_range(100.0 if spec.percent else None)
    help = f"Fail if a site's {spec.metric} is {side} this{unit}{suffix}."
    option = limit_opt(spec.flag, help=help, min=0 if spec.integer else None, callback=callback,
                       show_default=False)  # fmt: skip
    kind: Any = int | None if spec.integer else float | None
    return inspect.Parameter(spec.key, options.KEYWORD, default=None,
                             annotation=Annotated[kind, option])  # fmt: skip


#: One flag per declared threshold key: a new statistic's threshold is a flag with no edit here.
LIMIT_FLAGS = options.Flags([threshold_option(spec) for spec in thresholds.SPECS.values()])


@common.app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag check sample_models/plain_mlp.py --data sklearn:digits --max-dead-pct 20\n\n"
    "neurodiag check model.py --config ci.yaml --format github --junit-xml report.xml\n\n"
    "neurodiag check model.py --baseline base.json --update-baseline   (first run)"
)
@options.declared
def check(
    model: options.ModelArg,
    *,
    src: options.Source,
    measure: options.Measure,
    allow_empty: Annotated[bool, limit_opt("--allow-empty",
        help="Pass a check that found no activation site (exit 0).")] = False,
    config: Annotated[Path | None, limit_opt("--config", "-c", metavar="FILE",
        help="YAML thresholds file (thresholds/activations/sites); the tool.neurodiag "
        "table of the nearest pyproject.toml is read too.")] = None,
    limits: Annotated[dict[str, Any], LIMIT_FLAGS],
    baseline: Annotated[Path | None, baseline_opt("--baseline", metavar="FILE",
        help="Saved scan JSON: fail only on regressions against it (thresholds are not used).")
    ] = None,
    tolerance: Annotated[float, baseline_opt("--tolerance", metavar="POINTS",
        callback=options.in_range(lower=0.0, finite=True),
        help="Baseline: allowed worsening of the % columns, in points.")
    ] = baselines.DEFAULT_TOLERANCE,
    mag_factor: Annotated[float, baseline_opt("--mag-factor", metavar="FACTOR",
        callback=options.in_range(lower=1.0, finite=True),
        help="Baseline: allowed shrink factor of MAG.")] = baselines.DEFAULT_MAG_FACTOR,
    update_baseline: Annotated[bool, baseline_opt("--update-baseline",
        help="Write this scan to the --baseline FILE and exit 0.")] = False,
    fmt: Annotated[str, options.format_option(render.CHECK_RENDERERS)] = "table",
    output: options.OutputOpt = None,
    junit_xml: Annotated[Path | None, options.output_opt("--junit-xml", metavar="FILE",
        help="Also write JUnit XML to FILE (whatever --format is).")] = None,
    debug: options.DebugOpt = False,
    progress: options.ProgressOpt = True,
    plot: options.PlotOpt = None,
) -> None:  # fmt: skip
    """Scan MODEL like `scan`, then exit 1 if a site breaks a threshold (or regressed).

    Threshold precedence per site: first matching `sites` glob > `activations` entry > flags >
    --config thresholds > pyproject.toml thresholds > defaults (max-nonfinite 0).
    """
    from neurodiag.cli.runner import scan_from_options
    from neurodiag.scan import ScanInterrupted

    with common.user_errors(debug):
        written = baseline if update_baseline else None  # else --baseline is read
        outputs = {"--baseline": written, "--output": output, "--junit-xml": junit_xml}
        outputs["--plot"] = plot
        inputs = {"--config": config, "--baseline": None if update_baseline else baseline}
        refuse_overwriting_inputs(
            outputs, model=model, data=src.data, weights=src.weights, inputs=inputs
        )
        common.validate_plot(plot)
        gate = policy.prepare_gate(
            limits, config=config, baseline=baseline, update_baseline=update_baseline,
            forward_only=measure.forward_only, tolerance=tolerance, mag_factor=mag_factor,
            allow_empty=allow_empty,
        )  # fmt: skip
        # Ctrl-C gives no verdict: a scan cut short by the user must not pass (or fail) a gate.
        # A --timeout was asked for, so the batches seen get a verdict (marked partial).
        try:
            report = scan_from_options(model, src, measure, progress)
        except ScanInterrupted as stop:
            what = "; the scan did not finish, so there is no verdict"
            raise common.stopped(what, stop.terminated) from None
        gate.admit(report)
        common.save_scan_plot(report, plot)
        if gate.update and baseline is not None:
            if common.is_rank_zero():
                baselines.save_baseline(report, baseline)
            common.say(f"wrote baseline {baseline} ({len(report.rows)} sites)")
            return
        result = gate.judge(report)
        table = functools.partial(render_text.render_check_table, result)
        common.emit(fmt, output, lambda width: render.render_check(result, fmt), table)
        if junit_xml is not None and common.is_rank_zero():
            common.write_text(junit_xml, render.render_check(result, "junit"), "--junit-xml")
        if fmt == "github" and common.is_rank_zero():
            try:  # appended to (GitHub's contract); failing to is a warning: the verdict stands
                render_text.write_step_summary(result)
            except OSError as exc:
                where = f"$GITHUB_STEP_SUMMARY {exc.filename or ''!s}"
                common.say(
                    f"warning: cannot append to {where}: {exc.strerror or exc}; the verdict stands"
                )
    if policy.exit_code(result):
        raise typer.Exit(policy.exit_code(result))
