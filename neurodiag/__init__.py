"""neurodiag: dead neurons and gradient flow at every activation site of a PyTorch model."""

from neurodiag.activations.bernstein import Bernstein
from neurodiag.config import ScanConfig
from neurodiag.errors import NeurodiagError
from neurodiag.monitor import Monitor
from neurodiag.report.model import COLUMNS, Report, ScanHeader, SiteNeurons
from neurodiag.scan import ScanInterrupted, scan
from neurodiag.swap import swap_activations

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
    "scan",
    "swap_activations",
]
