"""``neurodiag treat``: parse options, load model and data, call
``neurodiag.treat.pipeline.run_treatment``, show before and after, write the treated state_dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from neurodiag.cli import common, options
from neurodiag.errors import NeurodiagError
from neurodiag.loading.overwrite import refuse_overwriting_inputs


@common.app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag treat model.py --weights ckpt.pt --data data.yaml --output treated.pt\n\n"
    "neurodiag treat model.py --data data.yaml --dormant-tau 0.1 --output treated.pt"
)
@options.declared
def treat(
    model: options.ModelArg,
    *,
    output: Annotated[Path, options.output_opt("--output", "-o", metavar="NEW.pt",
        help="Write the treated state_dict here (loads with weights_only=True).")],
    method: Annotated[str, options.metric_opt("--method", metavar="METHOD",
        help="redo: fresh incoming weights and zeroed outgoing ones for dead units; "
        "regrama: units whose pre-activation gets (almost) no gradient, fresh incoming "
        "weights and small non-zero outgoing ones; "
        "swap:SPEC: the error sites' activation replaced by SPEC (e.g. swap:bern9), fitted "
        "to the old one; NEW.pt.swap.json holds what rebuilds it.")] = "redo",
    dormant_tau: Annotated[float | None, options.metric_opt("--dormant-tau", metavar="TAU",
        callback=options.in_range(),
        help="redo: also recycle τ-dormant units (normalised score ≤ TAU), as ReDo does; "
        "regrama: the threshold on the gradient score (default 0.01).")] = None,
    src: Annotated[options.Source, options.Omit("timeout")],
    measure: Annotated[options.Measure, options.Omit("dead_window", "flag_gates",
        "forward_only", "rank", "rank_max_neurons")],
    debug: options.DebugOpt = False,
) -> None:  # fmt: skip
    """Recycle the dead units of MODEL (ReDo), prove it with a re-scan, write NEW.pt."""
    import torch
    from rich.console import Console

    from neurodiag.atomic import replacing
    from neurodiag.cli.runner import load, scan_config
    from neurodiag.loading.in_memory import materialise_batches
    from neurodiag.treat import pipeline
    from neurodiag.treat.render import report_lines, treatment_table

    with common.user_errors(debug):
        pipeline.check_method(method)  # a bad method or swap SPEC fails now, not after the scan
        swap_file = Path(f"{output}.swap.json") if pipeline.swap_spec(method) else None
        outputs = {"--output": output, "--output's .swap.json": swap_file}
        refuse_overwriting_inputs(outputs, model=model, data=src.data, weights=src.weights)
        if not output.parent.is_dir():  # before minutes of scanning, not after
            raise NeurodiagError(f"--output {output}: the folder {output.parent} does not exist")
        config = scan_config(src, measure)
        loaded, source = load(model, src)
        batches = materialise_batches(source.batches, "treat")
        try:
            treatment = pipeline.run_treatment(
                loaded.model, batches, config, method=method, dormant_tau=dormant_tau,
                loss_fn=loaded.hook("loss_fn"), model_name=loaded.name,
                data_name=source.description,
            )  # fmt: skip
        except pipeline.TreatInterrupted as stop:  # one line, 130/143, nothing written
            what = f" during the scan {stop.when} treating; {output} was not written"
            raise common.stopped(what, stop.terminated) from None
        rebuild = treatment.rebuild()
        if swap_file is not None and rebuild is not None:
            common.write_text(swap_file, json.dumps(rebuild, indent=2) + "\n")
        try:
            with common.signals_deferred(), replacing(output) as handle:
                torch.save(treatment.result.model.state_dict(), handle)
        except (OSError, RuntimeError) as exc:  # torch.save raises RuntimeError for some paths
            raise NeurodiagError(f"cannot write {output}: {exc}") from exc
        if not common.is_rank_zero():
            return
        console = Console(highlight=False)
        console.print(treatment_table(treatment))
        shape, data, weights = src.input_shape, src.data, src.weights
        for line in report_lines(treatment, output, model, data=data, weights=weights,
                                 input_shape=shape):  # fmt: skip
            console.print(line, markup=False)
