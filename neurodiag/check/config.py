"""Where thresholds come from and which one wins for a given site.

Sources: built-in defaults, ``[tool.neurodiag]`` in the nearest ``pyproject.toml`` that has one,
a YAML file (``--config``), and command-line flags. All files share one schema::

    thresholds: {max_dead_pct: 30, min_mag: 1e-8, max_nonfinite: 0}
    activations:              # by the report's ``activation`` column (case-insensitive)
      relu: {max_dead_pct: 40}
    sites:                    # by fnmatch glob on the site name; first match wins
      "encoder.*": {max_dead_pct: 10}

Precedence, per site and per key (the first layer that sets the key wins):

1. the first ``sites`` glob that matches the site (``--config`` rules before pyproject rules),
2. the ``activations`` entry of the site's activation (``--config`` before pyproject),
3. command-line flags (``--max-dead-pct`` ...),
4. ``thresholds`` of the ``--config`` file,
5. ``thresholds`` of ``[tool.neurodiag]`` in pyproject.toml,
6. built-in defaults (``max_nonfinite: 0``; every other key unchecked).

Why flags sit *below* the per-site and per-activation rules: a flag is a global setting (it has
no way to name a site), while a site or activation rule is a deliberate, reviewed exception in
the config. A workflow that runs ``--max-dead-pct 30`` must not silently erase
``"head.*": {max_dead_pct: 80}`` (a known, accepted case) nor loosen
``"encoder.*": {max_dead_pct: 10}`` (a stricter rule) — the same way ruff's ``--select`` keeps
``per-file-ignores`` and mypy's per-module sections refine its global flags. Every violation
names the layer its limit came from, so an unexpected limit is easy to trace.

A value of ``null`` switches a key off at that layer, e.g. ``sites: {"aux.*": {min_mag: null}}``
for a head that gets no gradient by design. Why first-match-wins for ``sites``: it is the rule of
``--feature-dim GLOB=DIM`` too, so one tool has one glob rule: list the most specific pattern
first. Keys a matching rule does not set fall through to the next layer.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from neurodiag.check.thresholds import (
    DEFAULTS,
    Limit,
    Thresholds,
    parse_thresholds,
    unknown_key_error,
)
from neurodiag.errors import NeurodiagError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Top-level keys of a config file / ``[tool.neurodiag]``.
CONFIG_KEYS: tuple[str, ...] = ("thresholds", "activations", "sites")


@dataclass(frozen=True)
class Rule:
    """One ``activations`` or ``sites`` entry: ``pattern`` -> partial thresholds."""

    pattern: str
    values: Mapping[str, Limit]
    source: str  # e.g. "sites['encoder.*'] in ci.yaml", shown next to a violation

    def matches_site(self, site: str) -> bool:
        return fnmatchcase(site, self.pattern)

    def matches_activation(self, activation: str) -> bool:
        return self.pattern.lower() == activation.lower()


@dataclass(frozen=True)
class ConfigFile:
    """The validated contents of one config source (a YAML file or ``[tool.neurodiag]``)."""

    name: str
    thresholds: Mapping[str, Limit] = field(default_factory=dict)
    activations: tuple[Rule, ...] = ()
    sites: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class ThresholdConfig:
    """All threshold layers, resolved per site with ``resolve`` (precedence: module docstring)."""

    base: Thresholds = field(default_factory=Thresholds)
    base_sources: Mapping[str, str] = field(default_factory=dict)
    activations: tuple[Rule, ...] = ()
    sites: tuple[Rule, ...] = ()
    sources: tuple[str, ...] = ()  # files read, most important first

    @classmethod
    def from_layers(
        cls,
        files: list[ConfigFile],
        cli_overrides: Mapping[str, Any] | None = None,
        overrides_source: str | None = None,
    ) -> ThresholdConfig:
        """Combine ``files`` (most important first) with CLI flags and the built-in defaults.

        ``overrides_source`` names where ``cli_overrides`` came from in violation reasons
        (default: the flag, e.g. ``--max-dead-pct``).
        """
        values: dict[str, Limit] = dict(DEFAULTS)
        sources = {key: "built-in default" for key in DEFAULTS}
        for config in reversed(files):  # least important first, so later ones overwrite
            values.update(config.thresholds)
            sources.update({key: f"thresholds in {config.name}" for key in config.thresholds})
        flags = parse_thresholds(
            {k: v for k, v in (cli_overrides or {}).items() if v is not None},
            overrides_source or "command line",
        )
        values.update(flags)
        sources.update({key: overrides_source or "--" + key.replace("_", "-") for key in flags})
        return cls(
            base=Thresholds(**values),
            base_sources=sources,
            activations=tuple(rule for config in files for rule in config.activations),
            sites=tuple(rule for config in files for rule in config.sites),
            sources=tuple(config.name for config in files),
        )

    def keys_in_use(self) -> set[str]:
        """Every threshold key some layer sets (base limits, activation and site rules)."""
        keys = set(self.base.active())
        for rule in self.activations + self.sites:
            keys.update(key for key, value in rule.values.items() if value is not None)
        return keys

    def resolve(self, site: str, activation: str) -> tuple[Thresholds, dict[str, str]]:
        """The limits for one site and, per checked key, the layer that set it."""
        values = self.base.to_dict()
        sources = {key: self.base_sources.get(key, "built-in default") for key in values}
        for rule in (
            next((r for r in self.activations if r.matches_activation(activation)), None),
            next((r for r in self.sites if r.matches_site(site)), None),
        ):
            if rule is not None:
                values.update(rule.values)
                sources.update(dict.fromkeys(rule.values, rule.source))
        thresholds = Thresholds(**values)
        return thresholds, {key: sources[key] for key in thresholds.active()}

    def for_site(self, site: str, activation: str) -> Thresholds:
        """The limits that apply to ``site`` (whose report ``activation`` column is given)."""
        return self.resolve(site, activation)[0]


def parse_config(raw: Any, name: str) -> ConfigFile:
    """Validate a parsed document (YAML or the ``[tool.neurodiag]`` table) against the schema."""
    if raw is None:
        return ConfigFile(name)
    if not isinstance(raw, Mapping):
        raise NeurodiagError(
            f"{name} must be a mapping with keys {', '.join(CONFIG_KEYS)}, "
            f"got {type(raw).__name__}; fix the file"
        )
    for key in raw:
        if key not in CONFIG_KEYS:
            raise unknown_key_error(key, name, CONFIG_KEYS)
    return ConfigFile(
        name=name,
        thresholds=parse_thresholds(raw.get("thresholds"), f"{name}: thresholds"),
        activations=tuple(_rules(raw.get("activations"), "activations", name)),
        sites=tuple(_rules(raw.get("sites"), "sites", name)),
    )


def _rules(raw: Any, section: str, name: str) -> Iterator[Rule]:
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        raise NeurodiagError(
            f"{name}: '{section}' must be a mapping of "
            f"{'activation names' if section == 'activations' else 'site globs'} to thresholds, "
            f"got {type(raw).__name__}; fix the file"
        )
    for pattern, values in raw.items():
        # YAML reads an unquoted numeric key (a Sequential index, ``1:``) as an int.
        if isinstance(pattern, bool) or not isinstance(pattern, str | int) or pattern == "":
            raise NeurodiagError(
                f"{name}: {section} key {pattern!r} must be a non-empty string; quote it"
            )
        label = f"{section}[{str(pattern)!r}]"
        yield Rule(str(pattern), parse_thresholds(values, f"{name}: {label}"), f"{label} in {name}")


def read_yaml_config(path: Path) -> ConfigFile:
    """``--config FILE``: YAML read with ``yaml.safe_load`` (JSON is YAML too)."""
    if not path.is_file():
        raise NeurodiagError(f"config file '{path}' not found; check --config")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise NeurodiagError(
            f"config file '{path}' is not valid YAML{where}: {problem}; fix the syntax"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NeurodiagError(f"cannot read config file '{path}': {exc}") from None
    except RecursionError:
        raise NeurodiagError(
            f"config file '{path}' is nested too deeply to be a neurodiag config; fix the file"
        ) from None
    return parse_config(raw, str(path))


def find_pyproject(start: Path) -> tuple[Path, Any] | None:
    """The nearest ``pyproject.toml`` in ``start`` or a parent that has ``[tool.neurodiag]``.

    Like ruff, a pyproject without the table is skipped, so a package's own pyproject in a
    monorepo does not hide the repository's settings. A pyproject that does not parse is an
    error only if it mentions neurodiag (an unrelated broken file elsewhere is not our business).
    """
    start = start.resolve()
    for folder in (start, *start.parents):
        path = folder / "pyproject.toml"
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            if "neurodiag" in text:
                raise NeurodiagError(f"cannot read '{path}': {exc}; fix the TOML") from None
            continue
        tool = doc.get("tool")
        if isinstance(tool, dict) and "neurodiag" in tool:
            return path, tool["neurodiag"]
    return None


_CWD = Path()  # marker: "search from the current directory at call time"


def load_thresholds(
    config_path: str | Path | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    search_from: Path | None = _CWD,
    overrides_source: str | None = None,
) -> ThresholdConfig:
    """All threshold layers for ``check``: pyproject (found from ``search_from``), YAML, flags.

    ``search_from=None`` skips pyproject discovery (hermetic tests); the default is the current
    directory at call time. ``cli_overrides`` maps threshold keys to values; None values mean
    "flag not given" and are ignored; ``overrides_source`` names them in messages (default: the
    flag names, e.g. ``--max-dead-pct``).
    """
    files: list[ConfigFile] = []
    if config_path is not None:
        files.append(read_yaml_config(Path(config_path).expanduser()))
    if search_from is not None:
        found = find_pyproject(Path.cwd() if search_from is _CWD else search_from)
        if found is not None:
            path, table = found
            files.append(parse_config(table, f"{path} [tool.neurodiag]"))
    return ThresholdConfig.from_layers(files, cli_overrides, overrides_source)


__all__ = [
    "CONFIG_KEYS",
    "ConfigFile",
    "Rule",
    "ThresholdConfig",
    "find_pyproject",
    "load_thresholds",
    "parse_config",
    "read_yaml_config",
]
