"""``neurodiag scan``: parse options, load model and data, call ``neurodiag.scan``, render."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

from neurodiag.cli import common, options
from neurodiag.loading.overwrite import refuse_overwriting_inputs
from neurodiag.report.model import Report
from neurodiag.report.render import RENDERERS


@common.app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag scan sample_models/plain_mlp.py --data sklearn:digits\n\n"
    "neurodiag scan model.py:build --weights ckpt.pt --data data.yaml --top 10\n\n"
    "neurodiag scan model.py --input-shape 3,32,32 -f html -o report.html\n\n"
    "Severity: README 'Reading a report'; data specs: docs/scan.md; columns: docs/metrics.md."
)
@options.declared
def scan(
    model: options.ModelArg,
    src: options.Source,
    measure: options.Measure,
    fmt: Annotated[str, options.format_option(RENDERERS)] = "table",
    only_flagged: Annotated[bool, options.output_opt("--only-flagged",
        help="List only sites with errors or warnings (table, Markdown; CSV/JSON keep all).")
    ] = False,
    top: Annotated[int | None, options.output_opt("--top", metavar="N", min=1,
        help="List only the N worst sites (table, Markdown; CSV/JSON keep all).")] = None,
    output: options.OutputOpt = None,
    debug: options.DebugOpt = False,
    progress: options.ProgressOpt = True,
    plot: options.PlotOpt = None,
) -> None:  # fmt: skip
    """Scan every activation site of MODEL and report dead/dormant neurons and gradient flow."""
    from neurodiag.cli.runner import scan_from_options
    from neurodiag.scan import ScanInterrupted

    with common.user_errors(debug):
        outputs = {"--output": output, "--plot": plot}
        refuse_overwriting_inputs(outputs, model=model, data=src.data, weights=src.weights)
        common.validate_plot(plot)
        try:
            report = scan_from_options(model, src, measure, progress)
        except ScanInterrupted as stop:
            show(stop.report.shown(only_flagged=only_flagged, top=top), fmt, output)
            raise common.stopped("; the report is partial", stop.terminated) from None
        show(report.shown(only_flagged=only_flagged, top=top), fmt, output)
        common.save_scan_plot(report, plot)


def show(report: Report, fmt: str, output: Path | None) -> None:
    """The report in ``fmt``: in colour on a terminal for the table, else as text."""
    from neurodiag.report.render import render
    from neurodiag.report.render_table import render_table

    table = functools.partial(render_table, report)
    common.emit(fmt, output, lambda width: render(report, fmt, width=width), table)
