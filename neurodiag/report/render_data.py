"""Machine formats: CSV and JSON at full precision, for scripts, notebooks and CI artefacts.

Both read ``Report.to_frame()`` so their columns are exactly ``COLUMNS`` in order, whatever extra
keys a row dict may carry.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from neurodiag.report.model import Report

#: Bumped when a key of the JSON document changes meaning or disappears.
JSON_SCHEMA_VERSION = 1


def to_csv(report: Report, *, width: int | None = None, color: bool = False) -> str:
    """Sites only (header facts would break ``pd.read_csv``); NaN/None become empty cells.

    A partial report (Ctrl-C, SIGTERM, ``--timeout``) gets a last column ``partial`` = True.

    ``width`` and ``color`` are part of the common renderer signature and do not apply.
    """
    frame = report.to_frame()
    if report.header.partial:  # the only run fact a CSV must not lose (docs/scan.md "Output")
        frame["partial"] = True
    return str(frame.to_csv(index=False, lineterminator="\n"))


def _plain(value: Any) -> Any:
    """A JSON-safe Python value: numpy/torch scalars unwrapped, NaN/±inf become null.

    Strict JSON has no NaN or Infinity; the ``nonfinite`` count says why a value is null.
    """
    if hasattr(value, "item") and callable(value.item):
        value = value.item()  # numpy scalar, 0-d array or one-element tensor
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is pd.NA or value is pd.NaT:
        return None
    raise TypeError(f"cannot put {type(value).__name__} value {value!r} in the JSON report")


def to_json(report: Report, *, width: int | None = None, color: bool = False) -> str:
    """``{"version": 1, <header fields>, "sites": [{<COLUMNS>}, ...]}``, indented, strict JSON.

    ``width`` and ``color`` are part of the common renderer signature and do not apply.
    """
    header = {key: _plain(value) for key, value in report.header.to_dict().items()}
    sites = [
        {str(key): _plain(value) for key, value in row.items()}
        for row in report.to_frame().to_dict(orient="records")
    ]
    document = {"version": JSON_SCHEMA_VERSION, **header, "sites": sites}
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
