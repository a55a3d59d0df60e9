"""The console script (``neurodiag``) and ``python -m neurodiag``: import the CLI, then run it.

Importing the CLI imports torch (seconds); a Ctrl-C or SIGTERM meanwhile must be a clean exit
(130 / 143) like one during a scan, not a traceback from inside torch's import.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def main() -> None:
    try:
        from neurodiag.cli import main as cli_main
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    cli_main()
