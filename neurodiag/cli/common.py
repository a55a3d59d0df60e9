"""Shared pieces of the CLI: the Typer app, option types, error handling, progress, output."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from neurodiag import __version__, atomic
from neurodiag.errors import NeurodiagError
from neurodiag.report.model import Report

app = typer.Typer(
    name="neurodiag",
    help="Dead neurons and gradient flow at every activation site of a PyTorch model.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

#: --help groups the options into these panels.
MODEL_PANEL = "Model and data"
METRICS_PANEL = "Metrics"
OUTPUT_PANEL = "Output"
THRESHOLDS_PANEL = "Thresholds"
BASELINE_PANEL = "Baseline"
TRAINING_PANEL = "Training"

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
T = TypeVar("T")


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"
    html = "html"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class DeadWindow(str, Enum):
    scan = "scan"
    batch = "batch"


class Mode(str, Enum):
    eval = "eval"
    train = "train"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"neurodiag {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Dead neurons and gradient flow at every activation site of a PyTorch model."""


def exit_with(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` and return the Exit to raise. Under torchrun every rank says
    its own error, naming itself: a rank that fails alone (its forward raised) is the only one
    that knows why, and rank 0 may be waiting for it in a collective."""
    rank, world = distributed_rank_world()
    where = f"rank {rank} of {world}: " if world > 1 else ""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"error: {where}{message}", markup=False
    )
    return typer.Exit(code)


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn bad input into one line + exit 2 (a traceback only with --debug)."""
    from neurodiag.errors import Terminated

    try:
        yield
    except NeurodiagError as exc:
        if debug:
            raise
        raise exit_with(str(exc)) from None
    except KeyboardInterrupt as stop:
        # Ctrl-C / SIGTERM outside a scan (importing the model, loading data, saving): typer
        # would turn it into a silent 130, SIGTERM included; say it, and exit 130 or 143.
        terminated = isinstance(stop, Terminated)
        raise exit_with(
            f"{stopped_by(terminated)} before the end; output files are either complete or "
            "untouched",
            interrupted_code(terminated),
        ) from None


def init_distributed(device: torch.device) -> torch.device:
    """Under torchrun (WORLD_SIZE > 1): join the process group, gloo on CPU, nccl on CUDA.

    Returns the device this rank runs on (``cuda:LOCAL_RANK`` on GPUs).
    """
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    global _OWN_PROCESS_GROUP
    _OWN_PROCESS_GROUP = True
    return device


#: True when ``init_distributed`` created the process group (then the CLI must destroy it).
_OWN_PROCESS_GROUP = False


def finish_distributed(completed: bool, code: int = EXIT_USAGE) -> None:
    """Destroy the process group the CLI created, after every rank is done with it.

    A process that exits with a live gloo group aborts ("terminate called without an active
    exception", SIGABRT): the group's C++ threads are still joinable when the interpreter tears
    it down. The barrier first keeps a rank that finished early (fewer batches) from leaving while
    another is still in a collective; it is skipped when a command failed, as the other ranks
    may never reach it.
    """
    global _OWN_PROCESS_GROUP
    if not _OWN_PROCESS_GROUP:
        return
    import torch.distributed as dist

    _OWN_PROCESS_GROUP = False
    if not dist.is_initialized():
        return
    if not completed:
        # A failed rank must not wait for the others (they may be in a collective it never
        # joins, or already gone): leave now, without the group's teardown, so torchrun sees a
        # non-zero exit at once and stops the job. ``os._exit`` skips the gloo threads' C++
        # teardown, which aborts (SIGABRT) under a live group.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    dist.barrier()
    dist.destroy_process_group()


def is_rank_zero() -> bool:
    """Only rank 0 prints reports and errors; the other ranks stay silent."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def resolve_device(device: Device) -> torch.device:
    if device is Device.auto:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise NeurodiagError(
            "--device cuda was asked for but CUDA is not available; use --device cpu"
        )
    if device is Device.mps and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise NeurodiagError(
            "--device mps was asked for but MPS is not available; use --device cpu"
        )
    return torch.device(device.value)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise NeurodiagError(
            f"--input-shape {text!r} is not a list of integers; write e.g. 3,32,32"
        ) from None
    if not shape or any(s <= 0 for s in shape):
        raise NeurodiagError(f"--input-shape {text!r} must be positive integers, e.g. 3,32,32")
    return shape


def parse_feature_dims(items: list[str]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in items:
        glob, sep, dim = item.rpartition("=")
        try:
            dims[glob] = int(dim)
        except ValueError:
            sep = ""
        if not sep or not glob:
            raise NeurodiagError(
                f"--feature-dim {item!r} must look like 'GLOB=DIM', e.g. 'attn*=-1'"
            )
    return dims


@contextmanager
def progress_bar(
    total: int | None, enabled: bool, label: str = "scanning"
) -> Iterator[Callable[..., None] | None]:
    """A Rich progress bar on stderr, only on a TTY, with elapsed and remaining time;
    ``advance(done, total=None, what=None)`` (``what``: e.g. the variant and epoch running)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)

        def advance(done: int, total: int | None = None, what: str | None = None) -> None:
            description = f"{label} {what}" if what else label
            progress.update(task, completed=done, total=total, description=description)

        yield advance


def piped_width() -> int | None:
    """The table width for stdout that is not a terminal: ``$COLUMNS`` when set (a pipe into
    ``less`` or a CI log that sets it), else natural width (a file never wraps)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return None
    return columns if columns > 0 else None


def emit(report: Report, fmt: OutputFormat, output: Path | None) -> None:
    """Print or write the report in the chosen format."""
    from neurodiag.report import render, render_table

    if not is_rank_zero():
        return
    if output is None and fmt is OutputFormat.table and sys.stdout.isatty():
        render_table(report, Console(highlight=False))
        return
    width = piped_width() if output is None else None
    print_or_write(render(report, fmt.value, width=width), output)


def interrupted_code(terminated: bool) -> int:
    """130 after Ctrl-C, 143 after SIGTERM (docs/scan.md "Errors and exit codes")."""
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def stopped_by(terminated: bool) -> str:
    """How the one-line message names the stop: Ctrl-C or SIGTERM."""
    return "terminated (SIGTERM)" if terminated else "interrupted"


def validate_plot(plot: Path | None) -> None:
    """``--plot``: refuse an unwritable format before scanning (not after the report)."""
    if plot is not None and is_rank_zero():
        from neurodiag.plots import check_plot_path

        check_plot_path(plot)


def save_scan_plot(report: Report, plot: Path | None) -> None:
    """``--plot``: dead % and MAG by depth, written by rank 0 only."""
    if plot is not None and is_rank_zero():
        from neurodiag.plots import plot_scan

        plot_scan(report, plot)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while an output file is written (milliseconds).

    The partial report written after a first Ctrl-C must not be lost to a second one; the
    held signal arrives as soon as the file is in place. Only the main thread can do this.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Python-level handlers that only remember the signal: a blocked signal mask is per thread,
    # and a process-directed SIGTERM goes to any thread that does not block it (torch's
    # workers), whose delivery still runs the Python handler in the main thread mid-write.
    pending: list[int] = []

    def hold(signum: int, frame: object) -> None:
        pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:  # now that the file is in place, the first held signal goes through
            handler = previous[signal.Signals(pending[0])]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(pending[0])


def write_text(output: Path, text: str, option: str = "--output") -> None:
    """Write an output file atomically (the old file stays whole on any failure); an unwritable
    path is a one-line user error naming ``option``."""
    try:
        with signals_deferred():
            atomic.write_text(output, text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        raise NeurodiagError(
            f"cannot write {option} {str(output)!r}: {exc.strerror or exc}; choose a writable path"
        ) from None


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same inode where both exist, else the same resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.expanduser().resolve() == b.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: the write reports it later
        return False


def _model_file(model: str) -> Path | None:
    from neurodiag.loading.pyfile import split_file_spec

    spec = split_file_spec(model.strip())
    return Path(spec[0]).expanduser() if spec is not None else None


def _data_files(data: str) -> list[tuple[str, Path]]:
    """The files a ``--data`` spec reads: the spec's own file, and the ``source`` file of a YAML
    data config (a config that does not parse names nothing here; loading reports it)."""
    from neurodiag.loading.data_config import read_data_config
    from neurodiag.loading.pyfile import split_file_spec

    spec = data.strip()
    file_spec = split_file_spec(spec)
    own = Path(file_spec[0] if file_spec is not None else spec).expanduser()
    if not own.is_file():
        return []
    found = [("the --data file", own)]
    if own.suffix.lower() in (".yaml", ".yml"):
        try:
            source = read_data_config(spec).source
        except NeurodiagError:
            source = None
        if source:
            named = split_file_spec(source)
            path = Path(named[0] if named is not None else source).expanduser()
            path = path if path.is_absolute() else own.parent / path
            if path.is_file():
                found.append((f"the data file that {own} names", path))
    return found


def refuse_overwriting_inputs(
    outputs: dict[str, Path | None],
    *,
    model: str | None = None,
    data: str | None = None,
    weights: Path | None = None,
    inputs: dict[str, Path | None] | None = None,
) -> None:
    """An output option that names an input (or another output) is a one-line error, before
    any work: ``scan m.py -o m.py`` would otherwise replace the model file with a report.

    ``outputs``: option name -> path; ``inputs``: other input options (``--config``, a
    ``--baseline`` that is read), option name -> path.
    """
    named: list[tuple[str, Path]] = []
    if model is not None and (path := _model_file(model)) is not None:
        named.append(("the model file", path))
    if data:
        named.extend(_data_files(data))
    if weights is not None:
        named.append(("the --weights file", weights))
    named.extend((f"the {option} file", p) for option, p in (inputs or {}).items() if p)
    written: list[tuple[str, Path]] = []
    for option, path in outputs.items():
        if path is None:
            continue
        for what, source in [*named, *((f"also {o}", p) for o, p in written)]:
            if _same_file(path, source):
                raise NeurodiagError(f"{option} {path} is {what}; choose another path")
        written.append((option, path))


def print_or_write(text: str, output: Path | None) -> None:
    """Rendered text to stdout, or to ``--output FILE``."""
    if output is None:
        try:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # ``neurodiag check ... | head``: the reader left. The verdict (the exit code) still
            # counts; the rest of the output goes nowhere instead of raising again at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    else:
        write_text(output, text)


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


DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        rich_help_panel=MODEL_PANEL,
        metavar="SPEC",
        help="A YAML file, .pt/.npz/.npy/.csv/.parquet, sklearn:NAME, mnist1d:train|test or "
        "loaders.py:fn (Python: executed). Default: the model file's make_data(), else "
        "synthetic batches.",
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        "-w",
        rich_help_panel=MODEL_PANEL,
        metavar="CKPT",
        help="State dict or checkpoint (weights_only).",
    ),
]
DeviceOpt = Annotated[
    Device, typer.Option("--device", rich_help_panel=MODEL_PANEL, help="Where to run the scan.")
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        callback=check_seed,
        rich_help_panel=MODEL_PANEL,
        metavar="N",
        help=f"Seed for data order, synthetic data and the loss (0 to {MAX_SEED}, default 0).",
    ),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        rich_help_panel=MODEL_PANEL,
        metavar="N",
        help="Batch size (overrides the YAML).",
    ),
]
NumBatchesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-batches",
        "--num-batches",
        min=1,
        rich_help_panel=MODEL_PANEL,
        metavar="N",
        help="Stop after N batches.",
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        callback=in_range(finite=True),
        rich_help_panel=MODEL_PANEL,
        metavar="SECONDS",
        help="Stop after SECONDS; the report is marked partial.",
    ),
]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        rich_help_panel=MODEL_PANEL,
        metavar="SHAPE",
        help="Synthetic input shape without batch dim, e.g. 3,32,32.",
    ),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(
        "--target", rich_help_panel=MODEL_PANEL, metavar="COLUMN", help="CSV/Parquet target column."
    ),
]


reject_nan = in_range()


EpsOpt = Annotated[
    float,
    typer.Option(
        "--eps",
        callback=reject_nan,
        rich_help_panel=METRICS_PANEL,
        metavar="EPS",
        help="Dead if |σ'(z)| ≤ eps everywhere.",
    ),
]
TauOpt = Annotated[
    float,
    typer.Option(
        "--tau",
        callback=reject_nan,
        rich_help_panel=METRICS_PANEL,
        metavar="TAU",
        help="Dormant if normalised score ≤ tau.",
    ),
]
DeadWindowOpt = Annotated[
    DeadWindow,
    typer.Option(
        "--dead-window",
        rich_help_panel=METRICS_PANEL,
        help="scan: dead over the whole scan; batch: per-batch average.",
    ),
]
ModeOpt = Annotated[
    Mode,
    typer.Option("--mode", rich_help_panel=METRICS_PANEL, help="Model behaviour during the scan."),
]
IncludeOpt = Annotated[
    list[str],
    typer.Option(
        "--include", rich_help_panel=METRICS_PANEL, metavar="GLOB", help="Only sites matching glob."
    ),
]
ExcludeOpt = Annotated[
    list[str],
    typer.Option(
        "--exclude", rich_help_panel=METRICS_PANEL, metavar="GLOB", help="Skip sites matching glob."
    ),
]
FeatureDimOpt = Annotated[
    list[str],
    typer.Option(
        "--feature-dim",
        rich_help_panel=METRICS_PANEL,
        metavar="GLOB=DIM",
        help="Neuron dim per site: 'GLOB=DIM'.",
    ),
]
FlagGatesOpt = Annotated[
    bool,
    typer.Option(
        "--flag-gates",
        rich_help_panel=METRICS_PANEL,
        help="Judge gates (a sigmoid scaling a feature map, role 'gate') like activations; "
        "by default only NaN/Inf flags them.",
    ),
]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option("--format", "-f", rich_help_panel=OUTPUT_PANEL, help="Output format."),
]
OnlyFlaggedOpt = Annotated[
    bool,
    typer.Option(
        "--only-flagged",
        rich_help_panel=OUTPUT_PANEL,
        help="List only sites with errors or warnings (table, Markdown; CSV/JSON keep all).",
    ),
]
TopOpt = Annotated[
    int | None,
    typer.Option(
        "--top",
        min=1,
        metavar="N",
        rich_help_panel=OUTPUT_PANEL,
        help="List only the N worst sites (table, Markdown; CSV/JSON keep all).",
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", rich_help_panel=OUTPUT_PANEL, metavar="FILE", help="Write to FILE."
    ),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        rich_help_panel=OUTPUT_PANEL,
        metavar="FILE.png",
        help="PNG of dead % and MAG by depth (matplotlib).",
    ),
]
DebugOpt = Annotated[
    bool, typer.Option("--debug", rich_help_panel=OUTPUT_PANEL, help="Show tracebacks.")
]
ProgressOpt = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress", rich_help_panel=OUTPUT_PANEL, help="Progress bar (TTY)."
    ),
]
ForwardOnlyOpt = Annotated[
    bool,
    typer.Option(
        "--forward-only",
        rich_help_panel=METRICS_PANEL,
        help="Skip the backward: dead %, dormant %, min |σ'| and forward NaN/Inf counts only "
        "(the gradient columns stay empty); about half the time of a full scan.",
    ),
]
RankOpt = Annotated[
    bool,
    typer.Option(
        "--rank",
        rich_help_panel=METRICS_PANEL,
        help="Also measure each site's representation rank (effective_rank, srank in CSV, "
        "JSON and Markdown): a neurons² Gram matrix per site, O(positions × neurons²) per batch.",
    ),
]
RankMaxNeuronsOpt = Annotated[
    int,
    typer.Option(
        "--rank-max-neurons",
        min=1,
        metavar="N",
        rich_help_panel=METRICS_PANEL,
        help="With --rank: skip (empty rank) sites with more than N neurons.",
    ),
]


#: treat and compare hold every batch in memory; a loader without a length that gives more than
#: this many (an endless generator) is refused instead of filling memory forever.
MAX_UNSIZED_BATCHES = 1000


def materialise_batches(batches: Any, command: str) -> list[Any]:
    """The batches as a list, for commands that go over them more than once; a loader with no
    ``len()`` that does not end within ``MAX_UNSIZED_BATCHES`` is a one-line error."""
    import itertools

    try:
        len(batches)
    except TypeError:
        taken = list(itertools.islice(batches, MAX_UNSIZED_BATCHES + 1))
        if len(taken) > MAX_UNSIZED_BATCHES:
            raise NeurodiagError(
                f"the data has no length and gave more than {MAX_UNSIZED_BATCHES} batches (an "
                f"endless loader?); {command} keeps every batch in memory: pass --max-batches N"
            ) from None
        return taken
    return list(batches)


def count_batches(batches: Any, cap: int | None) -> int | None:
    try:
        n = len(batches)
    except TypeError:
        return cap
    return min(n, cap) if cap else n
