"""Threshold keys: which report column each limit reads, in which direction, and what it accepts.

One table (``SPECS``) drives the config-file schema, the library keywords, evaluation and the
text of every violation, so the CLI flags, ``[tool.neurodiag]`` and ``assert_healthy(**kw)`` can
never disagree about a key's name, unit or range. Percentages are in percent (0-100), exactly as
the report's ``*_pct`` columns, never fractions.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neurodiag.errors import NeurodiagError
from neurodiag.stats.registry import STATISTICS
from neurodiag.stats.statistic import Threshold

#: A validated threshold value; None means "not checked".
Limit = float | int | None


@dataclass(frozen=True)
class ThresholdSpec(Threshold):
    """A declared ``Threshold`` with the column it reads (``value <op> limit`` must NOT hold)."""

    metric: str = ""  # the report column it reads
    gradient: bool = False  # the column needs a backward (empty in a forward-only scan)
    help: str = ""


#: Every threshold key, from the statistics' column declarations (``neurodiag.stats.registry``).
SPECS: dict[str, ThresholdSpec] = {
    key: ThresholdSpec(
        **vars(threshold), metric=column.name, gradient=column.gradient, help=column.help
    )
    for key, (column, threshold) in STATISTICS.thresholds().items()
}
THRESHOLD_KEYS: tuple[str, ...] = tuple(SPECS)

#: Built-in defaults, as declared (only ``max_nonfinite: 0``): a non-finite value is a bug on any
#: model, while "how many dead neurons is too many" depends on the model.
DEFAULTS: dict[str, Limit] = {
    key: threshold.default
    for key, (_, threshold) in STATISTICS.thresholds().items()
    if threshold.default is not None
}


class Thresholds:
    """The limits that apply to one site (None: not checked); one attribute per key.

    The Bernstein bound (``bound_ok`` must not be False) is always checked and has no key: a broken
    bound means the activation is wrong, whatever the model.
    """

    __slots__ = ("_limits",)
    _limits: dict[str, Limit]

    def __init__(self, **limits: Limit) -> None:
        unknown = sorted(set(limits) - set(SPECS))
        if unknown:
            raise unknown_key_error(unknown[0], "thresholds", THRESHOLD_KEYS)
        values = {key: DEFAULTS.get(key) for key in THRESHOLD_KEYS}
        values.update(limits)
        object.__setattr__(self, "_limits", values)

    def __getattr__(self, key: str) -> Limit:
        if key in SPECS:
            value: Limit = self._limits[key]
            return value
        raise AttributeError(key)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Thresholds are immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Thresholds) and self._limits == other._limits

    def __hash__(self) -> int:
        return hash(tuple(self._limits.items()))

    def __repr__(self) -> str:
        return f"Thresholds({', '.join(f'{k}={v!r}' for k, v in self.active().items())})"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "thresholds") -> Thresholds:
        """Validated thresholds from ``{key: value}``; keys left out keep the built-in defaults."""
        return cls(**{**DEFAULTS, **parse_thresholds(values, where)})

    def to_dict(self) -> dict[str, Limit]:
        """Every key, None for the ones not checked (stable order: ``THRESHOLD_KEYS``)."""
        return dict(self._limits)

    def active(self) -> dict[str, float | int]:
        """Only the keys that are checked."""
        return {key: value for key, value in self._limits.items() if value is not None}


def unknown_key_error(key: object, where: str, valid: tuple[str, ...]) -> NeurodiagError:
    """One line naming the bad key, the closest valid one (typos are the usual cause) and all."""
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return NeurodiagError(f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(valid)}")


def parse_value(key: str, value: Any, where: str = "thresholds") -> Limit:
    """One threshold value, validated; ``None`` passes through (it means "not checked").

    Numeric strings are accepted because YAML 1.1 (PyYAML) reads ``1e-8`` without a dot as a
    string; they are parsed with ``float()``, never evaluated. Booleans are refused although
    Python counts them as integers: ``max_dead_pct: true`` is a mistake, not 1%.
    """
    spec = SPECS.get(key)
    if spec is None:
        raise unknown_key_error(key, where, THRESHOLD_KEYS)
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    ok = number is not None and math.isfinite(number) and number >= 0
    if ok and number is not None:
        if spec.percent and number > 100:
            ok = False
        if spec.integer and not number.is_integer():
            ok = False
    if not ok or number is None:
        raise NeurodiagError(
            f"{where}: '{key}' must be {spec.expected()}, got {type(value).__name__} "
            f"{value!r}; fix the value"
        )
    return int(number) if spec.integer else number


def parse_thresholds(raw: Any, where: str = "thresholds") -> dict[str, Limit]:
    """A partial layer ``{key: value}``: only the keys given (None kept: "switch this off")."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise NeurodiagError(
            f"{where} must be a mapping of threshold keys ({', '.join(THRESHOLD_KEYS)}), "
            f"got {type(raw).__name__} {raw!r}"
        )
    return {str(key): parse_value(str(key), value, where) for key, value in raw.items()}


__all__ = [
    "DEFAULTS",
    "SPECS",
    "THRESHOLD_KEYS",
    "Limit",
    "ThresholdSpec",
    "Thresholds",
    "parse_thresholds",
    "parse_value",
    "unknown_key_error",
]
