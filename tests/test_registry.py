"""The one registry pattern (``neurodiag.registry.Registry``) and the registries built on it."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch.nn.functional as F
import yaml
from torch import nn

from neurodiag.activations.registry import REGISTRY as ACTIVATIONS
from neurodiag.activations.registry import ActivationRegistry
from neurodiag.check.render import CHECK_RENDERERS
from neurodiag.compare.render import COMPARE_FIGURES, COMPARE_RENDERERS
from neurodiag.compare.summary import COMPARISON_VIEWS
from neurodiag.compare.variants import INIT_NAMES
from neurodiag.errors import NeurodiagError
from neurodiag.inspect.report import INSPECT_RENDERERS
from neurodiag.loading.sources import REGISTRY as SOURCES
from neurodiag.registry import Registry, UnknownNameError
from neurodiag.report import Report
from neurodiag.report.model import REPORT_VIEWS
from neurodiag.report.render import RENDERERS, UnknownFormatError, render
from neurodiag.report.render_data import to_json
from neurodiag.report.render_html import FIGURES
from neurodiag.stats.registry import STATISTICS
from tests.fixtures.reports import report_row, sample_header

YAML_FORMAT = Path(__file__).parent / "fixtures" / "yaml_format.py"


def _colours() -> Registry[int]:
    registry: Registry[int] = Registry("colour")
    registry.register("red", 1)
    registry.register("green", 2)
    registry.register("blue", 3)
    return registry


def test_a_registry_is_an_ordered_read_only_mapping() -> None:
    colours = _colours()
    assert list(colours) == ["red", "green", "blue"] == list(colours.names())
    assert list(colours.items()) == [("red", 1), ("green", 2), ("blue", 3)]
    assert "green" in colours and "pink" not in colours and ["red"] not in colours
    assert colours["blue"] == 3 and len(colours) == 3 and colours.get("pink") is None
    assert not hasattr(colours, "__setitem__") and not hasattr(colours, "__delitem__")


def test_register_refuses_a_silent_override_and_says_how_to_replace() -> None:
    colours = _colours()
    with pytest.raises(ValueError, match=r"^colour 'red' is already registered; pass overwrite"):
        colours.register("red", 10)
    assert colours["red"] == 1
    colours.register("red", 10, overwrite=True)
    assert colours["red"] == 10 and list(colours) == ["red", "green", "blue"]  # keeps its place


@pytest.mark.parametrize("name", ["", " ", " red", "red "])
def test_register_refuses_blank_names(name: str) -> None:
    with pytest.raises(ValueError, match="non-empty word"):
        _colours().register(name, 0)


def test_a_miss_lists_the_valid_names_in_order() -> None:
    with pytest.raises(UnknownNameError) as info:
        _colours()["pink"]
    assert str(info.value) == "unknown colour 'pink'; known: red, green, blue"
    # a KeyError for mapping code, a ValueError for callers, one line for the CLI
    assert all(isinstance(info.value, t) for t in (KeyError, ValueError, NeurodiagError))
    with pytest.raises(UnknownNameError, match=r"known: none$"):
        Registry[int]("colour")["pink"]


def test_register_is_a_decorator_and_unregister_clear_update_round_trip() -> None:
    colours = _colours()

    @colours.register("cyan")
    def _cyan() -> None: ...

    assert colours["cyan"] is _cyan  # type: ignore[comparison-overlap]
    saved = dict(colours)
    assert colours.unregister("cyan") is _cyan  # type: ignore[comparison-overlap]
    colours.clear()
    assert len(colours) == 0
    colours.update(saved)
    assert dict(colours) == saved
    with pytest.raises(ValueError, match="already registered"):
        colours.update({"pink": 4, "red": 5})
    assert dict(colours) == saved  # all or none


@pytest.mark.parametrize(
    ("registry", "first"),
    [
        (RENDERERS, "table"),
        (CHECK_RENDERERS, "table"),
        (COMPARE_RENDERERS, "table"),
        (INSPECT_RENDERERS, "table"),
        (STATISTICS, "dead"),
        (ACTIVATIONS, "relu"),
        (SOURCES.suffixes, ".pt"),
        (SOURCES.schemes, "sklearn:"),
        (FIGURES, "dead % and MAG by depth"),  # registered by neurodiag.plots
        (COMPARE_FIGURES, "the paper's five figures"),
        (INIT_NAMES, "he"),
        (REPORT_VIEWS, "repr"),  # registered by neurodiag.report.render
        (COMPARISON_VIEWS, "html"),  # registered by neurodiag.compare.render
    ],
)
def test_every_registry_is_the_one_pattern(registry: Any, first: str) -> None:
    """Every registry reads the same way: names in order, a miss lists them, no silent override."""
    assert next(iter(registry)) == first and first in registry
    with pytest.raises(UnknownNameError) as info:
        registry["no-such-name"]
    assert ", ".join(registry) in str(info.value)
    with pytest.raises(ValueError, match="already registered"):
        if registry is STATISTICS or registry is ACTIVATIONS:  # their items name themselves
            registry.register(registry[first])
        else:
            registry.register(first, registry[first])


def test_an_overwritten_activation_no_longer_answers_for_its_old_modules() -> None:
    registry = ActivationRegistry()
    relu = ACTIVATIONS["relu"]
    registry.register(relu)
    assert registry.for_module(nn.ReLU()) is relu and registry.for_function(F.relu) is not None
    replacement = dataclasses.replace(relu, module_types=(nn.ReLU6,), functions=())
    registry.register(replacement, overwrite=True)
    assert registry.for_module(nn.ReLU()) is None and registry.for_function(F.relu) is None
    assert registry.for_module(nn.ReLU6()) is replacement and list(registry) == ["relu"]


def test_format_errors_keep_their_type() -> None:
    for registry in (RENDERERS, CHECK_RENDERERS, COMPARE_RENDERERS, INSPECT_RENDERERS):
        with pytest.raises(UnknownFormatError, match="choose one of: table, "):
            registry["xml"]


# --- a new output format is one file plus one registration -------------------------------------


@pytest.fixture
def report() -> Report:
    rows = [
        report_row("features.relu#0", "relu", dead_pct=45.3, min_abs_deriv=0.0),
        report_row("head.gelu#0", "gelu", mag=1.25e-4, min_abs_deriv=3.2e-2),
    ]
    return Report(header=sample_header(), rows=rows)


@pytest.fixture
def yaml_format() -> Iterator[ModuleType]:
    """tests/fixtures/yaml_format.py loaded afresh; the renderers are restored afterwards."""
    saved = dict(RENDERERS)
    spec = importlib.util.spec_from_file_location("yaml_format", YAML_FORMAT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        RENDERERS.clear()
        RENDERERS.update(saved)


def test_a_new_format_is_one_file_plus_one_registration(
    report: Report, yaml_format: ModuleType
) -> None:
    assert tuple(RENDERERS)[-1] == "yaml" and "yaml" in RENDERERS  # what the CLI offers
    text = render(report, "yaml")
    assert yaml.safe_load(text) == json.loads(to_json(report))
    assert text.startswith("version:") and "site: features.relu#0" in text
    source = YAML_FORMAT.read_text(encoding="utf-8")
    assert [line for line in source.splitlines() if "register(" in line] == [
        'RENDERERS.register("yaml", to_yaml)'
    ]


def test_the_new_format_is_gone_after_the_test(report: Report) -> None:
    assert "yaml" not in RENDERERS
    with pytest.raises(UnknownFormatError, match="unknown format 'yaml'"):
        render(report, "yaml")
