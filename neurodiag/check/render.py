"""The check renderer registry: a new output format for ``neurodiag check`` is one registration.

Mirrors ``neurodiag.report.render`` (same signature, same errors) but renders a CheckResult: the
verdict, not just the numbers.
"""

from __future__ import annotations

from typing import Protocol

from neurodiag.check.evaluation import CheckResult
from neurodiag.check.render_data import to_check_csv, to_check_json, to_check_junit
from neurodiag.check.render_html import to_check_html
from neurodiag.check.render_text import to_check_github, to_check_markdown, to_check_table
from neurodiag.registry import Registry
from neurodiag.report.render import UnknownFormatError


class CheckRenderer(Protocol):
    """``fn(result)`` works for every renderer; the keywords only shape terminal output."""

    def __call__(
        self, result: CheckResult, *, width: int | None = ..., color: bool = ...
    ) -> str: ...


#: Format name -> renderer, in the order they are listed to users.
CHECK_RENDERERS: Registry[CheckRenderer] = Registry(
    "check format", listing="choose one of", error=UnknownFormatError
)
CHECK_RENDERERS.update(
    {
        "table": to_check_table,
        "json": to_check_json,
        "junit": to_check_junit,
        "github": to_check_github,
        "markdown": to_check_markdown,
        "csv": to_check_csv,
        "html": to_check_html,
    }
)


def register_check_renderer(name: str, fn: CheckRenderer, *, overwrite: bool = False) -> None:
    """Add a check output format; replacing one must be asked for with ``overwrite``."""
    CHECK_RENDERERS.register(name, fn, overwrite=overwrite)


def render_check(
    result: CheckResult, fmt: str, *, width: int | None = None, color: bool = False
) -> str:
    """Render ``result`` as ``fmt`` (one of ``CHECK_RENDERERS``)."""
    return CHECK_RENDERERS[fmt](result, width=width, color=color)


__all__ = ["CHECK_RENDERERS", "CheckRenderer", "register_check_renderer", "render_check"]
