"""The renderer registry: a new output format is one ``register_renderer`` call.

Every renderer is a function of the Report alone; ``width`` and ``color`` are passed to all of them
so the registry never special-cases a format, and formats they do not apply to ignore them.
"""

from __future__ import annotations

from typing import Protocol

from neurodiag.errors import NeurodiagError
from neurodiag.report.model import Report
from neurodiag.report.render_data import to_csv, to_json
from neurodiag.report.render_html import to_html
from neurodiag.report.render_markdown import to_markdown
from neurodiag.report.render_table import to_table


class Renderer(Protocol):
    """``fn(report)`` works for every renderer; the keywords only shape terminal output."""

    def __call__(self, report: Report, *, width: int | None = ..., color: bool = ...) -> str: ...


class UnknownFormatError(NeurodiagError, ValueError):
    """A format name nobody registered: a ValueError for the API, a one-line error for the CLI."""


#: Format name -> renderer, in the order they are listed to users.
RENDERERS: dict[str, Renderer] = {
    "table": to_table,
    "csv": to_csv,
    "json": to_json,
    "markdown": to_markdown,
    "html": to_html,
}


def register_renderer(name: str, fn: Renderer, *, overwrite: bool = False) -> None:
    """Add an output format; replacing an existing one must be asked for with ``overwrite``."""
    if not name or not name.strip() or name != name.strip():
        raise ValueError(f"renderer name must be a non-empty word, got {name!r}")
    if name in RENDERERS and not overwrite:
        raise ValueError(
            f"a renderer named {name!r} is already registered; pass overwrite=True to replace it"
        )
    RENDERERS[name] = fn


def render(report: Report, fmt: str, *, width: int | None = None, color: bool = False) -> str:
    """Render ``report`` as ``fmt``; ``color`` defaults to off because strings go to files."""
    try:
        renderer = RENDERERS[fmt]
    except KeyError:
        raise UnknownFormatError(
            f"unknown format {fmt!r}; choose one of: {', '.join(RENDERERS)}"
        ) from None
    return renderer(report, width=width, color=color)
