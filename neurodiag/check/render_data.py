"""Check results for machines: JSON (everything), CSV (violations), JUnit XML (CI test reports).

Full precision everywhere (no human rounding); NaN becomes null/empty as in the scan formats.
The JSON embeds the scan JSON unchanged (header fields and ``sites`` rows), so a tool that reads
``neurodiag scan -f json`` reads the scan part of a check result too.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from neurodiag.check.evaluation import CheckResult
from neurodiag.check.summary import headline, summary_facts
from neurodiag.loading.pyfile import split_file_spec
from neurodiag.report.render_data import to_json

#: Columns of the CSV, one row per violation.
VIOLATION_COLUMNS: tuple[str, ...] = (
    "site",
    "activation",
    "metric",
    "value",
    "op",
    "threshold",
    "rule",
    "source",
    "reason",
)


def to_check_json(result: CheckResult, *, width: int | None = None, color: bool = False) -> str:
    """``{"ok", "check", "violations", "thresholds", "baseline", <scan header>, "sites"}``.

    ``thresholds`` are the global limits (per-activation/per-site rules are listed under
    ``overrides``; every site row carries its ``status`` and effective ``thresholds``).
    """
    scan = json.loads(to_json(result.report))
    checks = {check.site: check for check in result.sites}
    for row in scan["sites"]:
        check = checks.get(row["site"])
        if check is not None:
            row["status"] = check.status
            row["thresholds"] = check.thresholds.active() if check.thresholds else None
    config = result.config
    baseline = result.baseline
    document: dict[str, Any] = {
        "ok": result.ok,
        "check": result.mode,
        "summary": headline(result),
        "violations": [violation.to_dict() for violation in result.violations],
        "thresholds": config.base.active() if config is not None else None,
        "overrides": (
            {
                "activations": {rule.pattern: dict(rule.values) for rule in config.activations},
                "sites": {rule.pattern: dict(rule.values) for rule in config.sites},
            }
            if config is not None
            else None
        ),
        "config": list(config.sources) if config is not None else None,
        "baseline": (
            {
                "path": baseline.path,
                "tolerance": baseline.tolerance,
                "mag_factor": baseline.mag_factor,
                "new_sites": list(baseline.new_sites),
                "removed_sites": list(baseline.removed_sites),
            }
            if baseline is not None
            else None
        ),
        **scan,
    }
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def to_check_csv(result: CheckResult, *, width: int | None = None, color: bool = False) -> str:
    """One row per violation (just the header line when there are none)."""
    activations = {check.site: check.activation for check in result.sites}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VIOLATION_COLUMNS)
    for violation in result.violations:
        row = violation.to_dict() | {"activation": activations.get(violation.site, "")}
        writer.writerow(["" if row[c] is None else row[c] for c in VIOLATION_COLUMNS])
    return buffer.getvalue()


def junit_classname(model: str) -> str:
    """``sample_models/plain_mlp.py:build_model`` → ``sample_models.plain_mlp.build_model``."""
    path, factory = split_file_spec(model) or (model, None)
    path = path.replace("\\", "/")
    if path.lower().endswith(".py"):
        path = path[:-3]
    parts = [p for p in path.split("/") if p not in ("", ".", "..")]
    if factory:
        parts.append(factory)
    name = ".".join(parts) or "model"
    return re.sub(r"[^0-9A-Za-z_.\-]", "_", name)


def to_check_junit(result: CheckResult, *, width: int | None = None, color: bool = False) -> str:
    """JUnit XML: one testcase per site, one ``<failure>`` per violated metric.

    ``classname`` is the model spec made dotted (``sample_models.plain_mlp.build_model``: CI test
    views split it at dots, and slashes or colons broke their grouping) and ``name`` the site;
    scan facts go into ``<properties>``; new baseline sites are passing testcases with a
    ``<system-out>`` note. No timestamp, so the same result always gives the same bytes.
    """
    header = result.report.header
    failures = len(result.failed_sites)
    counts = {
        "tests": str(len(result.sites)),
        "failures": str(failures),
        "errors": "0",
        "skipped": "0",
        "time": f"{header.wall_time_s:.3f}",
    }
    root = ET.Element("testsuites", {"name": "neurodiag check", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": f"neurodiag check {header.model}", **counts})
    properties = ET.SubElement(suite, "properties")
    for label, value in summary_facts(result):
        ET.SubElement(properties, "property", {"name": label, "value": value})
    classname = junit_classname(header.model)
    for check in result.sites:
        case = ET.SubElement(
            suite, "testcase", {"classname": classname, "name": check.site, "time": "0"}
        )
        for violation in check.violations:
            failure = ET.SubElement(
                case, "failure", {"message": violation.describe(), "type": violation.rule}
            )
            failure.text = (
                f"site {check.site} ({check.activation}, {check.kind}): "
                f"{violation.describe()}: {violation.reason}"
            )
        if check.status == "new":
            ET.SubElement(case, "system-out").text = "new site: not in the baseline, not compared"
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + body + "\n"


__all__ = ["VIOLATION_COLUMNS", "to_check_csv", "to_check_json", "to_check_junit"]
