"""The ``neurodiag`` command: Typer commands that parse options, call the library and render.

No measurement logic lives here. User errors (``NeurodiagError``) become one line on stderr and
exit code 2; ``--debug`` shows the traceback instead. One module per command.
"""

from neurodiag.cli import scan as _scan  # noqa: F401  (registers the command)
from neurodiag.cli.common import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
