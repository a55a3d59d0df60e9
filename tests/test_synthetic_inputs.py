"""Synthetic inputs from what the model declares, fallbacks, and named-input data files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

import neurodiag
from neurodiag.cli import app
from neurodiag.errors import NeurodiagError
from neurodiag.loading import load_data
from neurodiag.loading.synthetic import candidate_recipes, choose_recipe


class FixedSizeNet(nn.Module):
    """A conv net whose Linear head only fits ``size`` px inputs (like a classifier at 224)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 4, stride=4)
        self.bn = nn.BatchNorm2d(2)
        self.act = nn.ReLU()
        self.head = nn.Linear(2 * (size // 4) ** 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.bn(self.conv(x))).flatten(1))


def _first_shape(model: nn.Module) -> tuple[int, ...]:
    batch = next(iter(load_data(None, model=model, batch_size=2, num_batches=1).batches))
    return tuple(batch.shape if isinstance(batch, Tensor) else batch["pixel_values"].shape)


def test_img_size_attribute_is_used_first() -> None:
    model = FixedSizeNet(48)
    model.img_size = 48  # type: ignore[assignment]
    assert _first_shape(model) == (2, 3, 48, 48)
    assert "img_size" in load_data(None, model=model).description


def test_timm_pretrained_cfg_input_size() -> None:
    model = FixedSizeNet(40)
    model.pretrained_cfg = {"input_size": (3, 40, 40)}  # type: ignore[assignment]
    assert _first_shape(model) == (2, 3, 40, 40)


def test_fallback_to_224_when_32_fails() -> None:
    model = FixedSizeNet(224)
    assert _first_shape(model) == (2, 3, 224, 224)
    report = neurodiag.scan(model, load_data(None, model=model, batch_size=2).batches)
    assert report.sites == ["act"]


def test_probing_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = FixedSizeNet(224).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    choose_recipe(model)  # probes 32 px (fails), then 224 px
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running stats
    assert int(model.bn.num_batches_tracked) == 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_no_candidate_fits_lists_every_shape_tried() -> None:
    with pytest.raises(NeurodiagError) as info:
        choose_recipe(FixedSizeNet(100))
    message = str(info.value)
    assert "\n" not in message
    assert "(B, 3, 32, 32) float32; (B, 3, 224, 224) float32" in message
    assert "--input-shape" in message


def test_no_candidate_fits_is_exit_2_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text(
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from tests.test_synthetic_inputs import FixedSizeNet\n"
        "def build_model():\n    return FixedSizeNet(100)\n"
    )
    result = CliRunner().invoke(app, ["scan", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "accepted none of the synthetic inputs tried" in result.output


def test_input_shape_replaces_the_candidates() -> None:
    recipes = candidate_recipes(FixedSizeNet(224), (3, 8, 8))
    assert [r.describe() for r in recipes] == ["(B, 3, 8, 8) float32"]


def test_hugging_face_recipes_name_their_inputs() -> None:
    pytest.importorskip("transformers")
    from tests.fixtures.hf_models import build

    want = {
        "vit64": "pixel_values (B, 3, 64, 64) float32",
        "wav2vec2": "input_values (B, 16000) float32",
        "whisper": "input_features (B, 8, 32) float32, decoder_input_ids (B, 4) int64",
        "llama": "input_ids (B, 16) int64, attention_mask (B, 16) int64",
    }
    for name, described in want.items():
        assert choose_recipe(build(name)).describe() == described, name


class Keywords(nn.Module):
    """A forward that takes named inputs only (Hugging Face style)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.act = nn.Tanh()

    def forward(self, features: Tensor, scale: Tensor) -> Tensor:
        return self.act(self.fc(features)) * scale


def _named_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"features": rng.normal(size=(10, 4)), "scale": np.ones((10, 1))}


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_data_files_may_hold_named_inputs(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"inputs{suffix}"
    arrays = _named_inputs()
    if suffix == ".pt":
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    else:
        np.savez(path, **arrays)  # type: ignore[arg-type]
    source = load_data(str(path), model=Keywords(), batch_size=4)
    first = next(iter(source.batches))
    assert set(first) == {"features", "scale"} and first["features"].shape == (4, 4)
    assert "named inputs features, scale" in source.description
    report = neurodiag.scan(Keywords(), source.batches)
    assert report.sites == ["act"] and report.header.samples == 10


def test_npz_saved_without_names_is_still_x_and_y(tmp_path: Path) -> None:
    path = tmp_path / "xy.npz"
    np.savez(path, np.zeros((6, 4)), np.zeros(6, dtype=np.int64))
    batch = next(iter(load_data(str(path), model=Keywords(), batch_size=3).batches))
    assert isinstance(batch, (tuple, list)) and batch[0].shape == (3, 4)


def test_forward_error_names_dict_inputs_and_calls_1d_inputs_signals() -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU())
    with pytest.raises(NeurodiagError) as info:
        neurodiag.scan(model, [{"input": torch.zeros(2, 5, 7)}])
    message: Any = str(info.value)
    assert "input (2, 5, 7) float32" in message
    assert "(batch, 2, L) float signals" in message


class CountsThenFails(nn.Module):
    """Writes a buffer and draws random numbers before rejecting anything but 224 px."""

    def __init__(self) -> None:
        super().__init__()
        self.net = FixedSizeNet(224)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        torch.rand(3)  # the global RNG must still be as the caller left it
        return self.net(x)


def test_probing_restores_everything_even_when_a_probe_raises() -> None:
    torch.manual_seed(0)
    model = CountsThenFails()
    model.train()
    model.net.bn.eval()  # a mixed-mode model keeps its per-module flags
    model.net.head.weight.grad = torch.ones_like(model.net.head.weight)
    model.net.conv.weight.requires_grad_(False)
    handle = model.net.act.register_forward_hook(lambda *args: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert candidate_recipes(model)[0].describe() == "(B, 3, 32, 32) float32"  # fails first
    assert choose_recipe(model).describe() == "(B, 3, 224, 224) float32"
    assert model.training and model.net.training and not model.net.bn.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert int(model.calls) == 0 and int(model.net.bn.num_batches_tracked) == 0
    assert torch.equal(model.net.head.weight.grad, torch.ones_like(model.net.head.weight))
    assert model.net.conv.bias is not None and model.net.conv.bias.grad is None
    assert not model.net.conv.weight.requires_grad
    assert list(model.net.act._forward_hooks) == [handle.id]  # the user's hook, and no other
    assert not model.net.act._forward_pre_hooks and not model._forward_hooks
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_first_candidate_that_fits_costs_one_forward() -> None:
    model = CountsThenFails()
    model.net = FixedSizeNet(32)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    choose_recipe(model)
    assert calls == [1]


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        (nn.Conv1d(2, 4, 3), "(batch, 2, L) float signals"),
        (nn.Conv2d(3, 4, 3), "(batch, 3, H, W) float images"),
        (nn.Conv3d(1, 4, 3), "(batch, 1, D, H, W) float volumes"),
    ],
)
def test_forward_error_words_follow_the_conv_rank(layer: nn.Module, words: str) -> None:
    with pytest.raises(NeurodiagError) as info:
        neurodiag.scan(nn.Sequential(layer, nn.ReLU()), [torch.zeros(2, 5, 9, 9, 9)])
    assert f"the model's first layer expects {words}" in str(info.value)


def test_all_fail_through_the_cli_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text(
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from tests.test_synthetic_inputs import FixedSizeNet\n"
        "def build_model():\n    return FixedSizeNet(100)\n"
    )
    result = CliRunner().invoke(app, ["scan", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "(B, 3, 32, 32) float32; (B, 3, 224, 224) float32" in lines[0]


def test_a_named_input_the_forward_lacks_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "typo.npz"
    np.savez(path, feature=np.zeros((4, 4)), scale=np.ones((4, 1)))  # "feature", not "features"
    source = load_data(str(path), model=Keywords(), batch_size=4)
    with pytest.raises(NeurodiagError) as info:
        neurodiag.scan(Keywords(), source.batches)
    message = str(info.value)
    assert "\n" not in message
    assert "the forward has no parameter feature (it takes features, scale)" in message
