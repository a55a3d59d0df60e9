"""neurodiag: dead neurons and gradient flow at every activation site of a PyTorch model."""

import os
import sys

try:  # these import torch: seconds, during which the user may press Ctrl-C
    from neurodiag.activations.bernstein import Bernstein
    from neurodiag.config import ScanConfig
    from neurodiag.errors import NeurodiagError
    from neurodiag.inspect import inspect
    from neurodiag.monitor import Monitor
    from neurodiag.plots import plot_scan  # also puts the scan figure into HTML reports
    from neurodiag.report.model import COLUMNS, Report, ScanHeader, SiteNeurons
    from neurodiag.scan import ScanInterrupted, scan
    from neurodiag.swap import swap_activations
    from neurodiag.treat import recycle
except KeyboardInterrupt:
    # the console script: a clean exit 130 (docs/scan.md "Errors and exit codes"), not a
    # traceback from inside torch's import; a program importing neurodiag gets its KeyboardInterrupt
    if os.path.basename(sys.argv[0]) in ("neurodiag", "neurodiag.exe"):
        raise SystemExit(130) from None
    raise

__version__ = "0.1.0"

__all__ = [
    "COLUMNS",
    "Bernstein",
    "Monitor",
    "NeurodiagError",
    "Report",
    "ScanConfig",
    "ScanHeader",
    "ScanInterrupted",
    "SiteNeurons",
    "__version__",
    "inspect",
    "plot_scan",
    "recycle",
    "scan",
    "swap_activations",
]
