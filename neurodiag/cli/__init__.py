"""The ``neurodiag`` command: Typer commands that parse options, call the library and render.

No measurement logic lives here. User errors (``NeurodiagError``) become one line on stderr and
exit code 2; ``--debug`` shows the traceback instead. One module per command; the options they
share are declared once, in ``neurodiag.cli.options``.
"""

import importlib
import signal
import sys
import traceback
from contextlib import suppress
from typing import Any

from neurodiag.cli import check, compare, inspect, scan, treat  # noqa: F401 (registers them)
from neurodiag.cli.common import (
    EXIT_USAGE,
    app,
    finish_distributed,
    interrupted_code,
    is_rank_zero,
)
from neurodiag.errors import Terminated


def _usage_errors() -> tuple[type[Exception], ...]:
    """Usage-error classes of the click that typer uses (recent typer vendors its own)."""
    found: list[type[Exception]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        with suppress(ImportError, AttributeError):  # depends on typer's release
            found.append(importlib.import_module(module).UsageError)
    return tuple(found)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; usage errors become one line and exit 2, like input errors."""
    received: list[int] = []

    def terminate(signum: int, frame: object) -> None:
        received.append(signum)
        raise Terminated()  # a KeyboardInterrupt: partial reports are kept, exit 143

    try:
        previous: Any = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    completed = False
    failed_with = EXIT_USAGE
    try:
        code = app(args=argv, standalone_mode=False)
        # an error (2) or a signal (130, 143) on this rank: the other ranks may never reach
        # the final barrier (1, an unhealthy check, is a verdict every rank shares)
        completed = not (isinstance(code, int) and code >= EXIT_USAGE)
        failed_with = code if isinstance(code, int) else EXIT_USAGE
    except _usage_errors() as exc:
        if is_rank_zero():
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "neurodiag"
            message = exc.format_message().rstrip(".")  # type: ignore[attr-defined]
            print(f"error: {message}; see '{command} --help'", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt as stop:
        failed_with = interrupted_code(isinstance(stop, Terminated))
        sys.exit(failed_with)
    except Exception:  # a bug: its traceback, before a torchrun rank leaves with os._exit
        traceback.print_exc()
        failed_with = 1
        sys.exit(failed_with)
    finally:
        if received and failed_with == interrupted_code(False):
            failed_with = interrupted_code(True)
        finish_distributed(completed, failed_with)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    code = code if isinstance(code, int) else 0
    if received and code == interrupted_code(False):  # typer's own Exit(130) for a SIGTERM
        code = interrupted_code(True)
    sys.exit(code)


__all__ = ["app", "main"]
