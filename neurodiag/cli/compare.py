"""``neurodiag compare``: the baseline vs activation variants, scanned or briefly trained alike."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any

from neurodiag.cli import common, options
from neurodiag.compare.engine import CompareProgress
from neurodiag.compare.render import COMPARE_RENDERERS
from neurodiag.compare.summary import Comparison
from neurodiag.compare.training import INITS, OPTIMIZERS, SCHEDULES
from neurodiag.errors import NeurodiagError
from neurodiag.loading.overwrite import refuse_overwriting_inputs

training_opt = functools.partial(options.opt, panel=common.TRAINING_PANEL)


def training_choice(names: Collection[str], flag: str, help: str) -> Any:
    return options.choice(names, flag, panel=common.TRAINING_PANEL, help=help)


# fmt: off
@dataclasses.dataclass(frozen=True)
class Training:
    """Training options: the keywords of ``neurodiag.compare`` of the same names (but holdout)."""

    epochs: Annotated[int, training_opt("--epochs", metavar="N", min=0,
        help="Training epochs (0: scan only).")] = 0
    steps: Annotated[int | None, training_opt("--steps", metavar="N", min=1,
        help="Stop after this many optimizer steps.")] = None
    optimizer: Annotated[str, training_choice(OPTIMIZERS, "--optimizer", "Optimizer.")] = "adam"
    lr: Annotated[float, training_opt("--lr", metavar="LR", callback=options.in_range(finite=True),
        help="Learning rate.")] = 1e-3
    weight_decay: Annotated[float, training_opt("--weight-decay", metavar="WD",
        callback=options.in_range(finite=True), help="Weight decay of the optimizer.")] = 0.0
    momentum: Annotated[float, training_opt("--momentum", metavar="M",
        callback=options.in_range(0.999), help="SGD momentum.")] = 0.0
    schedule: Annotated[str, training_choice(SCHEDULES, "--schedule",
        "Learning-rate schedule over all steps: constant, cosine (to 0) or step (x0.1 at 50 % "
        "and 75 %).")] = "constant"
    init: Annotated[str, training_choice(INITS, "--init",
        "Re-initialise Linear/Conv weights before the variants are made: model (as built), he "
        "(Kaiming-normal, zero bias), lecun (LeCun-normal, zero bias), xavier (Xavier-normal, "
        "zero bias), torch (PyTorch's default reset_parameters). One variant's own: "
        "SPEC:init=S, e.g. selu:init=lecun.")] = "model"
    train_window: Annotated[bool, training_opt("--train-window/--no-train-window",
        help="Also measure dead % over each epoch's training batches (the last epoch: the "
        "paper's Fig. 3 window) with neurodiag.Monitor.")] = True
    scan_batches: Annotated[int | None, training_opt("--scan-batches", metavar="N", min=1,
        help="Scan each variant after each epoch on the first N training batches only "
        "(default: all of them); the training window still sees every step.")] = None
    holdout: Annotated[float, training_opt("--holdout", metavar="FRACTION",
        callback=options.in_range(0.9),
        help="Fraction of samples held out for accuracy when training (0: none).")] = 0.2
    compiled_kernels: Annotated[bool, training_opt("--compiled-kernels",
        help="Run Bernstein activations through torch.compile'd kernels shared by all layers "
        "of a shape (seconds to compile; eager if compiling fails).")] = False
# fmt: on


@common.app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "neurodiag compare sample_models/plain_mlp.py --data sklearn:digits -a bern9:bn -a gelu "
    "--epochs 5 --plot compare.png\n\n"
    "neurodiag compare model.py -a bern9 -a lrelu0.01 --epochs 0   (scan each variant only)\n\n"
    "python scripts/reproduce_paper.py   (the paper's variants on digits and MNIST-1D)"
)
@options.declared
def compare(
    model: options.ModelArg,
    *,
    activation: Annotated[list[str], options.opt("--activation", "-a", panel="Variants",
        metavar="SPEC",
        help="Activation spec to compare with the model as it is: relu, lrelu0.01, gelu, selu, "
        "elu, silu, tanh, sigmoid, nrelu0.1, golu, bern9, bern15, "
        "bern9:delta=0.01:range=-5,5; ':bn' on any of them adds a BatchNorm in front "
        "(selu:bn, bern9:bn), ':res' skip connections (relu:res). Repeat for several.")],
    src: Annotated[options.Source, options.Omit("timeout")],
    training: Training,
    measure: Annotated[options.Measure, options.Omit("include", "exclude", "feature_dim",
        "flag_gates", "forward_only", "rank", "rank_max_neurons")],
    per_site: Annotated[bool, options.output_opt("--per-site", help="Also every variant's sites.")
    ] = False,
    fmt: Annotated[str, options.format_option(COMPARE_RENDERERS)] = "table",
    output: options.OutputOpt = None,
    plot: Annotated[Path | None, options.output_opt("--plot", metavar="FILE.png",
        help="PNG of the paper's five figures: min |σ'| by epoch (first, middle, last site) "
        "and by depth with δ̄, dead % by depth over the last epoch, first-site MAG, loss "
        "and accuracy by epoch.")] = None,
    debug: options.DebugOpt = False,
    progress: options.ProgressOpt = True,
) -> None:  # fmt: skip
    """Compare MODEL with its activations swapped, on the same data, seed and initial weights."""
    from neurodiag.cli.runner import load
    from neurodiag.compare import compare as run_compare
    from neurodiag.compare.engine import CompareInterrupted
    from neurodiag.compare.prepare import compare_batches

    with common.user_errors(debug):
        outputs = {"--output": output, "--plot": plot}
        refuse_overwriting_inputs(outputs, model=model, data=src.data, weights=src.weights)
        common.validate_plot(plot)
        if not activation:
            raise NeurodiagError("give at least one --activation, e.g. --activation bern9")
        seed = src.seed if src.seed is not None else 0
        settings = dataclasses.asdict(training)
        holdout = settings.pop("holdout")
        trains = bool(training.epochs or training.steps)
        loaded, source = load(model, src)
        train, held_out = compare_batches(source, trains=trains, holdout=holdout, seed=seed)
        try:
            enabled = progress and common.is_rank_zero()
            with common.progress_bar(None, enabled, "comparing") as advance:
                comparison = run_compare(
                    loaded.model, train, activation, **settings,
                    # with training, --batch-size also reshuffles samples into new batches
                    batch_size=src.batch_size if trains else None, seed=seed,
                    eval_data=held_out, loss_fn=loaded.hook("loss_fn"),
                    data_name=source.description, eps=measure.eps, tau=measure.tau,
                    dead_window=measure.dead_window, mode=measure.mode,
                    on_step=(lambda p: advance(p.done, p.total, step(p))) if advance else None,
                )  # fmt: skip
        except CompareInterrupted as stop:  # Ctrl-C / SIGTERM: show the variants that finished
            done = len(stop.comparison.variants)
            if done:
                show(stop.comparison, fmt, per_site, output)
            what = f"; the comparison above is partial ({done} of {stop.planned} variants finished)"
            raise common.stopped(what, stop.terminated) from None
        show(comparison, fmt, per_site, output)
        if plot is not None and common.is_rank_zero():
            from neurodiag.plots import plot_comparison

            plot_comparison(comparison, plot)


def step(progress: CompareProgress) -> str:
    """What the progress bar names: the variant, the epoch and the phase running."""
    return f"{progress.variant} · epoch {progress.epoch} · {progress.phase}"


def show(comparison: Comparison, fmt: str, per_site: bool, output: Path | None) -> None:
    """The comparison in ``fmt``, as wide as the terminal (or ``$COLUMNS`` when piped)."""
    from neurodiag.compare.render import render_comparison

    def text(width: int | None) -> str:
        return render_comparison(comparison, fmt, per_site=per_site, width=width)

    common.emit(fmt, output, text, lambda c: common.print_or_write(text(c.width), None))
