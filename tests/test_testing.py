"""``neurodiag.testing.assert_healthy``: the assertion users put in their own test suites.

The model's first ReLU is 50% dead by construction (bias[:4] = -100 in front of it), so which
site fails, with which value, is known before the scan runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.testing import SCAN_KEYWORDS, assert_healthy


def half_dead_mlp() -> nn.Module:
    torch.manual_seed(0)
    first = nn.Linear(4, 8)
    with torch.no_grad():
        first.bias[:4] = -100.0  # neurons 0-3 of site "1" never fire
    return nn.Sequential(first, nn.ReLU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3))


@pytest.fixture
def data() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(32, 4, generator=generator) for _ in range(3)]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_healthy_model_passes_and_returns_the_result(data: list[torch.Tensor]) -> None:
    result = assert_healthy(half_dead_mlp(), data, max_dead_pct=60)
    assert result.ok and result.report.sites == ["1", "3"]


def test_message_names_the_site_value_and_threshold(data: list[torch.Tensor]) -> None:
    with pytest.raises(AssertionError) as info:
        assert_healthy(half_dead_mlp(), data, max_dead_pct=30)
    assert str(info.value) == "1 site unhealthy: 1 dead_pct 50.0% > 30%"


def test_message_names_every_violating_site(data: list[torch.Tensor]) -> None:
    with pytest.raises(AssertionError) as info:
        assert_healthy(half_dead_mlp(), data, max_dead_pct=30, min_mag=1.0)
    message = str(info.value)
    assert message.startswith("2 sites unhealthy: 1 dead_pct 50.0% > 30%; 1 mag ")
    assert re.search(r"; 3 mag \d\.\d\de-\d < 1$", message), message


def test_scan_keywords_are_passed_through(data: list[torch.Tensor]) -> None:
    result = assert_healthy(half_dead_mlp(), data, max_batches=1, tau=0.0, include=["1"])
    header = result.report.header
    assert (header.batches, header.tau, result.report.sites) == (1, 0.0, ["1"])
    assert {"eps", "tau", "max_batches", "loss_fn"} <= set(SCAN_KEYWORDS)


def test_unknown_keyword_is_a_type_error(data: list[torch.Tensor]) -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword.*max_ded_pct"):
        assert_healthy(half_dead_mlp(), data, max_ded_pct=30)


def test_bad_threshold_value_names_the_key(data: list[torch.Tensor]) -> None:
    with pytest.raises(NeurodiagError, match=r"assert_healthy\(\): 'max_dead_pct' must be"):
        assert_healthy(half_dead_mlp(), data, max_dead_pct=300)


def test_pyproject_is_ignored_unless_asked_for(data: list[torch.Tensor]) -> None:
    Path("pyproject.toml").write_text("[tool.neurodiag.thresholds]\nmax_dead_pct = 10\n")
    assert_healthy(half_dead_mlp(), data)  # hermetic by default
    with pytest.raises(AssertionError, match=r"dead_pct 50\.0% > 10%"):
        assert_healthy(half_dead_mlp(), data, pyproject=True)
    assert_healthy(half_dead_mlp(), data, pyproject=True, max_dead_pct=60)  # keyword = flag


def test_config_file_rules_apply(data: list[torch.Tensor], tmp_path: Path) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text("sites:\n  '1': {max_dead_pct: 20}\n")
    with pytest.raises(AssertionError, match=r"1 dead_pct 50\.0% > 20%"):
        assert_healthy(half_dead_mlp(), data, config=config, max_dead_pct=60)
