"""The renderer registry: a new output format is one file plus one ``RENDERERS.register`` line.

Every renderer is a function of the Report alone; ``width`` and ``color`` are passed to all of them
so the registry never special-cases a format, and formats they do not apply to ignore them.
"""

from __future__ import annotations

from typing import Protocol

from neurodiag.registry import Registry, UnknownNameError
from neurodiag.report.model import REPORT_VIEWS, Report
from neurodiag.report.render_data import to_csv, to_json
from neurodiag.report.render_html import report_fragment, to_html
from neurodiag.report.render_markdown import to_markdown
from neurodiag.report.render_table import to_table
from neurodiag.report.verdict_text import report_line


class Renderer(Protocol):
    """``fn(report)`` works for every renderer; the keywords only shape terminal output."""

    def __call__(self, report: Report, *, width: int | None = ..., color: bool = ...) -> str: ...


class UnknownFormatError(UnknownNameError):
    """A format name nobody registered: a ValueError for the API, a one-line error for the CLI."""


#: Format name -> renderer, in the order they are listed to users; a new format is one
#: ``RENDERERS.register(name, fn)`` (or ``register_renderer``) in the file that defines it.
RENDERERS: Registry[Renderer] = Registry(
    "format", listing="choose one of", error=UnknownFormatError
)
RENDERERS.update(
    {"table": to_table, "csv": to_csv, "json": to_json, "markdown": to_markdown, "html": to_html}
)

#: How a Report shows itself at a prompt and in Jupyter: registered here, on the renderer side,
#: so the data module ``report.model`` imports no renderer.
REPORT_VIEWS.update({"repr": report_line, "html": report_fragment})


def register_renderer(name: str, fn: Renderer, *, overwrite: bool = False) -> None:
    """Add an output format; replacing an existing one must be asked for with ``overwrite``."""
    RENDERERS.register(name, fn, overwrite=overwrite)


def render(report: Report, fmt: str, *, width: int | None = None, color: bool = False) -> str:
    """Render ``report`` as ``fmt``; ``color`` defaults to off because strings go to files."""
    return RENDERERS[fmt](report, width=width, color=color)
