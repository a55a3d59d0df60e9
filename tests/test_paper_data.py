"""The vendored MNIST and HIGGS samples and their loaders in sample_models/paper_data.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neurodiag.cli import app

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
runner = CliRunner()


@pytest.fixture(scope="module")
def paper_data() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paper_data", SAMPLES / "paper_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_raw_files_shapes_and_dtypes() -> None:
    with np.load(SAMPLES / "data" / "mnist_subset.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["x", "y"]
        x, y = data["x"], data["y"]
    assert x.dtype == np.uint8 and x.shape == (10000, 784)
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    assert x.max() == 255 and x.min() == 0
    with np.load(SAMPLES / "data" / "higgs_sample.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["x", "y"]
        x, y = data["x"], data["y"]
    assert x.dtype == np.float32 and x.shape == (7500, 28)
    assert y.shape == (7500,) and set(np.unique(y)) == {0, 1}
    assert np.isfinite(x).all()


def _check_standardised(x: torch.Tensor) -> None:
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    std = x.double().std(dim=0, unbiased=False)
    live = std > 0
    assert live.any()
    assert x.double().mean(dim=0).abs().max() < 1e-4
    assert (std[live] - 1).abs().max() < 1e-4
    assert (x[:, ~live] == 0).all()  # constant columns become 0


@pytest.mark.parametrize(
    ("name", "samples", "features", "classes"),
    [
        ("mnist", 10000, 784, 10),
        ("mnist_2000", 2000, 784, 10),
        ("higgs", 7500, 28, 2),
        ("higgs_2000", 2000, 28, 2),
        ("higgs_train", 7000, 28, 2),
        ("higgs_test", 500, 28, 2),
    ],
)
def test_loaders(
    paper_data: ModuleType, name: str, samples: int, features: int, classes: int
) -> None:
    x, y = getattr(paper_data, name)()
    assert x.shape == (samples, features)
    assert y.dtype == torch.int64 and y.shape == (samples,)
    assert int(y.min()) == 0 and int(y.max()) == classes - 1
    counts = torch.bincount(y, minlength=classes).double() / samples
    assert counts.min() > 0.8 / classes and counts.max() < 1.2 / classes  # roughly balanced
    if name.startswith("mnist"):  # one mean and std over all pixels
        assert abs(float(x.double().mean())) < 1e-4
        assert abs(float(x.double().std(unbiased=False)) - 1) < 1e-4
        assert float(x.max()) < 10 and len(torch.unique(x[:, 0])) == 1  # blank corner pixel
    else:
        _check_standardised(x)


def test_mnist_2000_is_stratified_and_seeded(paper_data: ModuleType) -> None:
    x, y = paper_data.mnist_2000()
    assert torch.bincount(y).tolist() == [200] * 10
    x_again, y_again = paper_data.mnist_2000()
    assert torch.equal(x, x_again) and torch.equal(y, y_again)


@pytest.mark.parametrize(
    ("model", "inputs", "classes"),
    [("build_higgs_model", 28, 2), ("build_mnist_model", 784, 10)],
)
def test_plain_mlp_builders(model: str, inputs: int, classes: int) -> None:
    spec = importlib.util.spec_from_file_location("plain_mlp", SAMPLES / "plain_mlp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = getattr(module, model)()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 51 and linears[0].in_features == inputs
    assert linears[-1].out_features == classes
    assert net(torch.zeros(3, inputs)).shape == (3, classes)


@pytest.mark.parametrize(
    ("model", "data"),
    [("build_higgs_model", "higgs"), ("build_mnist_model", "mnist")],
)
def test_scan_cli_on_paper_data(model: str, data: str) -> None:
    result = runner.invoke(
        app,
        [
            "scan",
            f"{SAMPLES / 'plain_mlp.py'}:{model}",
            "--data",
            f"{SAMPLES / 'paper_data.py'}:{data}",
            "--max-batches",
            "2",
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["batches"] == 2
    assert len(doc["sites"]) == 50
    assert f"{data}()" in json.dumps(doc)
