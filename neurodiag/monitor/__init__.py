"""Watching training: the Monitor, its windows and alerts."""

from neurodiag.monitor.alerts import Alert
from neurodiag.monitor.core import Monitor
from neurodiag.monitor.window import SITE_METRICS, Window, history_frame, window_scalars

__all__ = ["SITE_METRICS", "Alert", "Monitor", "Window", "history_frame", "window_scalars"]
