"""Scan results (``Report``) and the ways to show them (``render`` and its registry)."""

from neurodiag.report.health import ERROR_DEAD_PCT, findings, is_unhealthy, severity
from neurodiag.report.model import COLUMNS, Report, ReportView, ScanHeader, SiteNeurons
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
from neurodiag.report.verdict import Rollup, Verdict, verdict

__all__ = [
    "COLUMNS",
    "ERROR_DEAD_PCT",
    "JSON_SCHEMA_VERSION",
    "RENDERERS",
    "Renderer",
    "Report",
    "ReportView",
    "Rollup",
    "ScanHeader",
    "SiteNeurons",
    "UnknownFormatError",
    "Verdict",
    "findings",
    "is_unhealthy",
    "register_renderer",
    "render",
    "render_table",
    "severity",
    "to_csv",
    "to_json",
    "to_markdown",
    "to_table",
    "verdict",
]
