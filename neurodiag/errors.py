"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations


class NeurodiagError(Exception):
    """Bad input the user can fix (missing file, bad YAML, wrong shape, ...).

    The message must be one line that names the problem and the fix; the CLI prints it
    without a traceback (unless ``--debug``) and exits with code 2.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (what CI runners and job schedulers send), raised by the CLI's signal handler.

    A KeyboardInterrupt, so every path that keeps a partial report on Ctrl-C keeps it on SIGTERM
    too; the CLI then exits 143 (128 + 15) instead of 130.
    """
