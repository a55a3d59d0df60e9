"""Scan results (``Report``) and the ways to show them (``render`` and its registry)."""

from neurodiag.report.health import is_unhealthy
from neurodiag.report.model import COLUMNS, Report, ScanHeader, SiteNeurons
from neurodiag.report.render import (
    RENDERERS,
    Renderer,
    UnknownFormatError,
    register_renderer,
    render,
)
from neurodiag.report.render_data import JSON_SCHEMA_VERSION, to_csv, to_json
from neurodiag.report.render_markdown import to_markdown
from neurodiag.report.render_table import render_table, to_table

__all__ = [
    "COLUMNS",
    "JSON_SCHEMA_VERSION",
    "RENDERERS",
    "Renderer",
    "Report",
    "ScanHeader",
    "SiteNeurons",
    "UnknownFormatError",
    "is_unhealthy",
    "register_renderer",
    "render",
    "render_table",
    "to_csv",
    "to_json",
    "to_markdown",
    "to_table",
]
