"""The YAML data config: read with ``yaml.safe_load`` and validated key by key.

Every key is optional; ``null`` means "not set". A missing ``source`` means the same as no data
spec (the model file's ``make_data()``, else synthetic data). Relative paths in ``source`` are
relative to the YAML file.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from neurodiag.errors import NeurodiagError
from neurodiag.loading.pyfile import describe_exception, one_line, why_not_a_file


@dataclass(frozen=True)
class DataConfig:
    """The validated contents of a YAML data config (None: not set)."""

    source: str | None = None
    batch_size: int | None = None
    num_batches: int | None = None
    shuffle: bool | None = None
    seed: int | None = None
    target: str | None = None
    input_shape: tuple[int, ...] | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _shape(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_positive_int(v) for v in value)


# key -> (check, expected type as told to the user)
SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "source": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "batch_size": (_positive_int, "a positive integer"),
    "num_batches": (_positive_int, "a positive integer"),
    "shuffle": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "target": (lambda v: isinstance(v, str) and bool(v), "a column name (string)"),
    "input_shape": (_shape, "a list of positive integers, e.g. [3, 32, 32]"),
}


def read_data_config(path_text: str) -> DataConfig:
    """Parse and validate the YAML data config at ``path_text``."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise NeurodiagError(f"data config '{path_text}' {why_not_a_file(path)}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise NeurodiagError(
            f"data config '{path_text}' is not valid YAML ({_yaml_problem(exc)}); fix the syntax"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise NeurodiagError(
            f"cannot read data config '{path_text}' ({describe_exception(exc)}); check the file"
        ) from exc
    except RecursionError:
        raise NeurodiagError(
            f"data config '{path_text}' is nested too deeply to be a data config; fix the file"
        ) from None
    return validate(raw, path_text)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = one_line(getattr(exc, "problem", None) or exc, 120)
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def validate(raw: Any, path_text: str) -> DataConfig:
    """Check keys and value types of a parsed YAML document."""
    where = f"data config '{path_text}'"
    if raw is None:
        return DataConfig()
    if not isinstance(raw, dict):
        raise NeurodiagError(
            f"{where} must be a mapping of keys ({', '.join(SCHEMA)}), "
            f"got a {type(raw).__name__}; fix the file"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in SCHEMA:
            close = difflib.get_close_matches(str(key), SCHEMA, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise NeurodiagError(
                f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(SCHEMA)}"
            )
        if value is None:
            continue
        check, expected = SCHEMA[key]
        if not check(value):
            raise NeurodiagError(
                f"{where}: key '{key}' must be {expected}, got {type(value).__name__} "
                f"{one_line(repr(value), 60)}; fix the value"
            )
        values[key] = tuple(value) if key == "input_shape" else value
    return DataConfig(**values)
