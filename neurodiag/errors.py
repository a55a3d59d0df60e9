"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations


class NeurodiagError(Exception):
    """Bad input the user can fix (missing file, bad YAML, wrong shape, ...).

    The message must be one line that names the problem and the fix; the CLI prints it
    without a traceback (unless ``--debug``) and exits with code 2.
    """
