"""TensorBoard for hand-written loops: each Monitor window written to a ``SummaryWriter``.

::

    from torch.utils.tensorboard import SummaryWriter
    from neurodiag.integrations.tensorboard import TensorBoardWindows

    writer = SummaryWriter("runs/exp1")
    with neurodiag.Monitor(model, every=100, on_window=TensorBoardWindows(writer)):
        ...                                   # the training loop

Scalars ``neurodiag/<summary>`` and ``neurodiag/<site>/<metric>`` at global step = the window's
last step + 1 (the number of steps done); with ``histograms=True`` also the per-neuron
distributions ``neurodiag/<site>/<name>`` (dormancy score, mean |activation|, ...), the view that
shows a layer's units drifting towards zero before they die. Needs the ``tensorboard`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neurodiag.monitor import SITE_METRICS, Window, window_scalars

#: Per-neuron values drawn as histograms (``Report.neurons``) with ``histograms=True``.
HISTOGRAM_VALUES: tuple[str, ...] = ("dormant_score", "mean_abs_activation", "grad_score")


class TensorBoardWindows:
    """An ``on_window`` listener for ``neurodiag.Monitor`` that writes to ``writer``."""

    def __init__(
        self,
        writer: Any,
        *,
        prefix: str = "neurodiag",
        per_site: bool = True,
        metrics: Sequence[str] = SITE_METRICS,
        histograms: bool = False,
        histogram_values: Sequence[str] = HISTOGRAM_VALUES,
    ) -> None:
        self.writer = writer
        self.prefix = prefix
        self.per_site = per_site
        self.metrics = tuple(metrics)
        self.histograms = histograms
        self.histogram_values = tuple(histogram_values)

    def __call__(self, window: Window) -> None:
        step = window.step_end
        scalars = window_scalars(
            window, prefix=self.prefix, per_site=self.per_site, metrics=self.metrics
        )
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        if self.histograms:
            for site, neurons in window.report.neurons.items():
                for name in self.histogram_values:
                    if name in neurons.names():
                        values = neurons[name]
                        values = values[values.isfinite()]  # NaN: no gradient reached a neuron
                        if values.numel():
                            self.writer.add_histogram(f"{self.prefix}/{site}/{name}", values, step)
        self.writer.flush()
