"""Every option shared by two commands, declared once: its flags, type, default, panel and help.

``Source`` (model and data) and ``Measure`` (metrics) are option groups: a command takes
``src: Source``, ``@declared`` shows typer each field as an option and hands the command the
group (``Annotated[Source, Omit("timeout")]``: no --timeout). ``--format`` accepts exactly the
formats of the command's renderer registry (``format_option``)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast, get_args, get_origin, get_type_hints

import typer

from neurodiag.cli.common import METRICS_PANEL, MODEL_PANEL, OUTPUT_PANEL
from neurodiag.config import DEAD_WINDOWS, DEFAULT_EPS, DEFAULT_RANK_MAX_NEURONS, DEFAULT_TAU, MODES
from neurodiag.loading.prepare import DEVICES

F = TypeVar("F", bound=Callable[..., Any])
KEYWORD = inspect.Parameter.KEYWORD_ONLY


def in_range(
    upper: float | None = None, *, lower: float = 0.0, finite: bool = False
) -> Callable[[float | None], float | None]:
    """Option callback: a number in [lower, upper] (``finite``: infinity refused too). Click's
    own range check lets NaN through to say "should be >= 0" (every comparison with NaN is
    False), so NaN is named here first; use this instead of ``min=``/``max=`` on floats."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if math.isnan(value) or (finite and math.isinf(value)):
            raise typer.BadParameter(f"must be a finite number, got {value:g}")
        if value < lower or (upper is not None and value > upper):
            bound = f"between {lower:g} and {upper:g}" if upper is not None else f">= {lower:g}"
            raise typer.BadParameter(f"must be {bound}, got {value:g}")
        return value

    return check


#: torch.manual_seed takes an unsigned 64-bit seed; a larger one was a traceback ("Overflow").
MAX_SEED = 2**64 - 1


def check_seed(value: int | None) -> int | None:
    """``--seed``: an integer torch can seed with, 0 to 2**64 - 1."""
    if value is not None and not 0 <= value <= MAX_SEED:
        raise typer.BadParameter(f"must be an integer from 0 to {MAX_SEED}, got {value}")
    return value


def opt(*flags: str, panel: str, help: str, metavar: str | None = None, **extra: Any) -> Any:
    """A ``typer.Option`` in a --help panel: the one spelling every declaration below uses."""
    return typer.Option(*flags, rich_help_panel=panel, metavar=metavar, help=help, **extra)


def choice(names: Collection[str], *flags: str, panel: str, help: str) -> Any:
    """An option taking one of ``names``, a registry or a table of the library, read when the
    command line is parsed (a name registered after import counts); any other value is a usage
    error (exit 2) before any work."""

    def known(value: str) -> str:
        if value not in names:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, names))}")
        return value

    metavar = f"<{'|'.join(names)}>"
    return opt(*flags, panel=panel, help=help, metavar=metavar, callback=known,
               autocompletion=lambda: list(names))  # fmt: skip


model_opt = functools.partial(opt, panel=MODEL_PANEL)
metric_opt = functools.partial(opt, panel=METRICS_PANEL)
output_opt = functools.partial(opt, panel=OUTPUT_PANEL)


def format_option(formats: Collection[str]) -> Any:
    """``--format/-f``: exactly the formats of the renderer registry the command renders with."""
    return choice(formats, "--format", "-f", panel=OUTPUT_PANEL, help="Output format.")


# Declarations read as a table: one option per entry, its help wrapped by hand.
# fmt: off
ModelArg = Annotated[str, typer.Argument(
    help="file.py, file.py:factory or package.module:attr (the file is executed).",
    metavar="MODEL", show_default=False)]
WeightsOpt = Annotated[Path | None, model_opt("--weights", "-w", metavar="CKPT",
    help="State dict or checkpoint (weights_only).")]
OutputOpt = Annotated[Path | None, output_opt("--output", "-o", metavar="FILE",
    help="Write to FILE.")]
PlotOpt = Annotated[Path | None, output_opt("--plot", metavar="FILE.png",
    help="PNG of dead % and MAG by depth (matplotlib).")]
DebugOpt = Annotated[bool, output_opt("--debug", help="Show tracebacks.")]
ProgressOpt = Annotated[bool, output_opt("--progress/--no-progress", help="Progress bar (TTY).")]


@dataclasses.dataclass(frozen=True)
class Source:
    """Model and data options: the weights, the batches, the device and the seed."""

    data: Annotated[str | None, model_opt("--data", "-d", metavar="SPEC",
        help="A YAML file, .pt/.npz/.npy/.csv/.parquet, sklearn:NAME, mnist1d:train|test or "
        "loaders.py:fn (Python: executed). Default: the model file's make_data(), else "
        "synthetic batches.")] = None
    weights: WeightsOpt = None
    device: Annotated[str, choice(DEVICES, "--device", panel=MODEL_PANEL,
        help="Where to run the scan.")] = "auto"
    seed: Annotated[int | None, model_opt("--seed", metavar="N", callback=check_seed,
        help=f"Seed for data order, synthetic data and the loss (0 to {MAX_SEED}, default 0).")
    ] = None
    batch_size: Annotated[int | None, model_opt("--batch-size", metavar="N", min=1,
        help="Batch size (overrides the YAML).")] = None
    max_batches: Annotated[int | None, model_opt("--max-batches", "--num-batches", metavar="N",
        min=1, help="Stop after N batches.")] = None
    timeout: Annotated[float | None, model_opt("--timeout", metavar="SECONDS",
        callback=in_range(finite=True), help="Stop after SECONDS; the report is marked partial.")
    ] = None
    input_shape: Annotated[str | None, model_opt("--input-shape", metavar="SHAPE",
        help="Synthetic input shape without batch dim, e.g. 3,32,32.")] = None
    target: Annotated[str | None, model_opt("--target", metavar="COLUMN",
        help="CSV/Parquet target column.")] = None


@dataclasses.dataclass(frozen=True)
class Measure:
    """Metrics options: what counts as dead or dormant, where, and what else is measured."""

    eps: Annotated[float, metric_opt("--eps", metavar="EPS", callback=in_range(),
        help="Dead if |σ'(z)| ≤ eps everywhere.")] = DEFAULT_EPS
    tau: Annotated[float, metric_opt("--tau", metavar="TAU", callback=in_range(),
        help="Dormant if normalised score ≤ tau.")] = DEFAULT_TAU
    dead_window: Annotated[str, choice(DEAD_WINDOWS, "--dead-window", panel=METRICS_PANEL,
        help="scan: dead over the whole scan; batch: per-batch average.")] = "scan"
    mode: Annotated[str, choice(MODES, "--mode", panel=METRICS_PANEL,
        help="Model behaviour during the scan.")] = "eval"
    include: Annotated[list[str], metric_opt("--include", metavar="GLOB",
        help="Only sites matching glob.")] = dataclasses.field(default_factory=list)
    exclude: Annotated[list[str], metric_opt("--exclude", metavar="GLOB",
        help="Skip sites matching glob.")] = dataclasses.field(default_factory=list)
    feature_dim: Annotated[list[str], metric_opt("--feature-dim", metavar="GLOB=DIM",
        help="Neuron dim per site: 'GLOB=DIM'.")] = dataclasses.field(default_factory=list)
    flag_gates: Annotated[bool, metric_opt("--flag-gates",
        help="Judge gates (a sigmoid scaling a feature map, role 'gate') like activations; "
        "by default only NaN/Inf flags them.")] = False
    forward_only: Annotated[bool, metric_opt("--forward-only",
        help="Skip the backward: dead %, dormant %, min |σ'| and forward NaN/Inf counts only "
        "(the gradient columns stay empty); about half the time of a full scan.")] = False
    rank: Annotated[bool, metric_opt("--rank",
        help="Also measure each site's representation rank (effective_rank, srank in CSV, "
        "JSON and Markdown): a neurons² Gram matrix per site, O(positions × neurons²) per "
        "batch.")] = False
    rank_max_neurons: Annotated[int, metric_opt("--rank-max-neurons", metavar="N", min=1,
        help="With --rank: skip (empty rank) sites with more than N neurons.")
    ] = DEFAULT_RANK_MAX_NEURONS
# fmt: on


class Omit:
    """``Annotated[Source, Omit("timeout")]``: the command has no such option (default kept)."""

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)


class Flags:
    """``Annotated[dict[str, Any], Flags(params)]``: options made at import (one per threshold
    a statistic declares, say); the command receives their values as a dict by name."""

    def __init__(self, params: list[inspect.Parameter]) -> None:
        self.params = params


def expand(hint: Any) -> tuple[Callable[..., Any], list[inspect.Parameter]] | None:
    """(what builds the group from its options' values, the options) of an option-group
    annotation; None for a single option."""
    group, *extra = get_args(hint) if get_origin(hint) is Annotated else (hint,)
    made = [p for e in extra if isinstance(e, Flags) for p in e.params]
    if made:
        return dict, made
    if not (isinstance(group, type) and dataclasses.is_dataclass(group)):
        return None
    omitted = {name for e in extra if isinstance(e, Omit) for name in e.names}
    typed = get_type_hints(group, include_extras=True)
    fields = [f for f in dataclasses.fields(group) if f.name not in omitted]
    defaults = [f.default_factory() if callable(f.default_factory) else f.default for f in fields]
    return group, [
        inspect.Parameter(f.name, KEYWORD, default=default, annotation=typed[f.name])
        for f, default in zip(fields, defaults)
    ]


def declared(command: F) -> F:
    """Show typer each option of ``command``'s option groups (a dataclass above, or ``Flags``)
    as its own, and hand the command each group built from their values."""
    hints = get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[Callable[..., Any], list[str]]] = {}
    for param in inspect.signature(command).parameters.values():
        expanded = expand(hints[param.name])
        if expanded is None:
            params.append(param.replace(annotation=hints[param.name], kind=KEYWORD))
            continue
        build, group_params = expanded
        groups[param.name] = (build, [p.name for p in group_params])
        params += group_params

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        for name, (build, names) in groups.items():
            kwargs[name] = build(**{n: kwargs.pop(n) for n in names})
        return command(**kwargs)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read the signature above, not the command's
    return cast(F, wrapper)
