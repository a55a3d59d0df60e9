"""Shared pieces of the CLI: the Typer app, errors and exit codes, torchrun, progress, output."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from neurodiag import __version__, atomic
from neurodiag.errors import NeurodiagError, Terminated
from neurodiag.loading.prepare import join_process_group, leave_process_group
from neurodiag.report.model import Report
from neurodiag.scan import distributed_rank_world

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


def say(message: str) -> None:
    """One plain line on stderr (no Rich markup, no highlighting, no wrapping)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(message, markup=False)


def exit_with(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` and return the Exit to raise. Under torchrun every rank says
    its own error, naming itself: a rank that fails alone (its forward raised) is the only one
    that knows why, and rank 0 may be waiting for it in a collective."""
    rank, world = distributed_rank_world()
    say(f"error: {f'rank {rank} of {world}: ' if world > 1 else ''}{message}")
    return typer.Exit(code)


def interrupted_code(terminated: bool) -> int:
    """130 after Ctrl-C, 143 after SIGTERM (docs/scan.md "Errors and exit codes")."""
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def stopped(what: str, terminated: bool) -> typer.Exit:
    """``interrupted WHAT`` (or ``terminated (SIGTERM) WHAT``) and the Exit, 130 or 143."""
    by = "terminated (SIGTERM)" if terminated else "interrupted"
    return exit_with(f"{by}{what}", interrupted_code(terminated))


@contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn bad input into one line + exit 2 (a traceback only with --debug)."""
    try:
        yield
    except NeurodiagError as exc:
        if debug:
            raise
        raise exit_with(str(exc)) from None
    except KeyboardInterrupt as stop:
        # Ctrl-C / SIGTERM outside a scan (importing the model, loading data, saving): typer
        # would turn it into a silent 130, SIGTERM included; say it, and exit 130 or 143.
        what = " before the end; output files are either complete or untouched"
        raise stopped(what, isinstance(stop, Terminated)) from None


def is_rank_zero() -> bool:
    """Only rank 0 prints reports and errors; the other ranks stay silent."""
    return distributed_rank_world()[0] == 0


#: True when ``init_distributed`` created the process group (then the CLI must destroy it).
_OWN_PROCESS_GROUP = False


def init_distributed(device: torch.device) -> torch.device:
    """The device this rank runs on, after joining torchrun's process group if there is one."""
    global _OWN_PROCESS_GROUP
    device, created = join_process_group(device)
    _OWN_PROCESS_GROUP = _OWN_PROCESS_GROUP or created
    return device


def finish_distributed(completed: bool, code: int = EXIT_USAGE) -> None:
    """Leave the process group the CLI created. A failed rank skips the final barrier (the
    others may never reach it) and leaves at once with ``os._exit`` (no teardown, which aborts
    under a live group), so torchrun sees a non-zero exit and stops the job."""
    global _OWN_PROCESS_GROUP
    own, _OWN_PROCESS_GROUP = _OWN_PROCESS_GROUP, False
    if own and not completed and torch.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if own:
        leave_process_group()


@contextmanager
def progress_bar(
    total: int | None, enabled: bool, label: str = "scanning"
) -> Iterator[Callable[..., None] | None]:
    """A Rich progress bar on stderr, only on a TTY, with elapsed and remaining time;
    ``advance(done, total=None, what=None)`` (``what``: e.g. the variant and epoch running)."""
    from rich import progress as bar

    if not enabled or not sys.stderr.isatty():
        yield None
        return
    columns = (bar.TextColumn("[bold]{task.description}"), bar.BarColumn())
    counts = (bar.MofNCompleteColumn(), bar.TimeElapsedColumn(), bar.TextColumn("eta"))
    console = Console(stderr=True)
    with bar.Progress(*columns, *counts, bar.TimeRemainingColumn(), console=console,
                      transient=True) as progress:  # fmt: skip
        task = progress.add_task(label, total=total)

        def advance(done: int, total: int | None = None, what: str | None = None) -> None:
            description = f"{label} {what}" if what else label
            progress.update(task, completed=done, total=total, description=description)

        yield advance


def emit(
    fmt: str,
    output: Path | None,
    text: Callable[[int | None], str],
    terminal: Callable[[Console], None] | None = None,
) -> None:
    """Rank 0 prints ``text(width)`` or writes it to ``output``; the table format on a TTY is
    ``terminal``'s (in colour). Piped, the width is ``$COLUMNS`` when set; a file never wraps."""
    if not is_rank_zero():
        return
    if output is None and fmt == "table" and terminal is not None and sys.stdout.isatty():
        terminal(Console(highlight=False))
        return
    try:  # piped: $COLUMNS when set (``| less``, a CI log), else natural width
        width = int(os.environ.get("COLUMNS", "")) if output is None else None
    except ValueError:
        width = None
    print_or_write(text(width if width and width > 0 else None), output)


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
    """Hold Ctrl-C and SIGTERM back while an output file is written (milliseconds): the partial
    report written after a first Ctrl-C must not be lost to a second one. Main thread only.

    Python-level handlers that only remember the signal, not a blocked mask: a mask is per
    thread, and a process-directed SIGTERM may land on a torch worker thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
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
        why = exc.strerror or exc
        raise NeurodiagError(
            f"cannot write {option} {str(output)!r}: {why}; choose a writable path"
        ) from None


def print_or_write(text: str, output: Path | None) -> None:
    """Rendered text to stdout, or to ``--output FILE``. A reader that left (``| head``) is not
    an error: the verdict is the exit code; the rest of the output goes nowhere."""
    if output is not None:
        write_text(output, text)
        return
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
