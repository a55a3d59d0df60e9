"""Hugging Face inputs from the config and forward signature (``neurodiag.loading.hf_inputs``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

import neurodiag
from neurodiag.errors import NeurodiagError
from neurodiag.loading import load_data
from neurodiag.loading.declared import conv_min_length
from neurodiag.loading.synthetic import candidate_recipes, choose_recipe

pytest.importorskip("transformers")

from tests.fixtures.hf_models import build


@pytest.mark.parametrize(
    ("name", "described"),
    [
        ("vit64_model", "pixel_values (B, 3, 64, 64) float32"),
        ("convnext", "pixel_values (B, 3, 32, 32) float32"),
        ("swin", "pixel_values (B, 3, 32, 32) float32"),
        ("wav2vec2_model", "input_values (B, 16000) float32"),
        ("whisper_generation", "input_features (B, 8, 32) float32"),
        ("ast", "input_values (B, 32, 16) float32"),
        ("speech2text", "input_features (B, 100, 8) float32, decoder_input_ids (B, 4) int64"),
        (
            "clip",
            "input_ids (B, 16) int64, attention_mask (B, 16) int64, "
            "pixel_values (B, 3, 32, 32) float32",
        ),
    ],
)
def test_the_chosen_recipe_names_the_declared_inputs(name: str, described: str) -> None:
    assert choose_recipe(build(name)).describe() == described


def test_whisper_generation_gets_labels_that_drive_its_decoder() -> None:
    model = build("whisper_generation")
    batch = next(iter(load_data(None, model=model, batch_size=2, num_batches=1).batches))
    assert set(batch) == {"input_features", "labels"} and batch["labels"].shape == (2, 4)
    assert model(**batch).loss is not None  # HF shifted the labels into decoder inputs


def test_description_names_the_inputs_and_where_they_came_from() -> None:
    source = load_data(None, model=build("vit64_model"), batch_size=2)
    assert source.description.startswith(
        "synthetic pixel_values (B, 3, 64, 64) standard normal (from ViTModel.config.image_size;"
    )


def test_input_shape_replaces_the_main_input_only() -> None:
    recipes = candidate_recipes(build("llama"), (7,))
    assert [r.describe() for r in recipes] == [
        "input_ids (B, 7) int64, attention_mask (B, 7) int64"
    ]


def test_text_falls_back_to_the_full_position_count() -> None:
    recipes = candidate_recipes(build("llama"))  # max_position_embeddings 2048: too long
    assert [r.inputs[0].shape for r in recipes] == [(16,)]
    bert = SimpleNamespace(vocab_size=30, max_position_embeddings=64)
    model = _Text(bert, "input_ids")
    assert [r.inputs[0].shape for r in candidate_recipes(model)] == [(16,), (64,)]


def test_conv_min_length_gives_the_frames_asked_for() -> None:
    config = SimpleNamespace(conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2))
    length = conv_min_length(config, frames=2)
    assert length is not None
    convs = nn.Sequential(nn.Conv1d(1, 1, 10, 5), nn.Conv1d(1, 1, 3, 2), nn.Conv1d(1, 1, 3, 2))
    assert convs(torch.zeros(1, 1, length)).shape[-1] == 2
    assert convs(torch.zeros(1, 1, length - 1)).shape[-1] == 1
    assert conv_min_length(SimpleNamespace()) is None


def test_audio_length_is_raised_to_what_the_feature_extractor_needs() -> None:
    config = SimpleNamespace(conv_kernel=(400,), conv_stride=(20000,))
    model = _Audio(config, "input_values")
    assert candidate_recipes(model)[0].inputs[0].shape == (20400,)


def test_video_models_get_frames_first() -> None:
    config = SimpleNamespace(num_frames=2, image_size=16, num_channels=3)
    model = _Video(config, "pixel_values")
    first = candidate_recipes(model)[0]
    assert first.describe() == "pixel_values (B, 2, 3, 16, 16) float32"


class _Declaring(nn.Module):
    """A Hugging Face-like module: a ``config`` and a ``main_input_name`` its forward takes."""

    def __init__(self, config: object, main: str) -> None:
        super().__init__()
        self.config = config
        self.main_input_name = main
        self.fc = nn.Linear(1, 1)


class _Text(_Declaring):
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return input_ids.float()


class _Audio(_Declaring):
    def forward(self, input_values: Tensor) -> Tensor:
        return input_values


class _Video(_Declaring):
    def forward(self, pixel_values: Tensor) -> Tensor:
        return pixel_values.flatten(1)


class _RejectsEverything(nn.Module):
    """Declares pixel_values but accepts no image: every candidate fails."""

    main_input_name = "pixel_values"

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_size=48, num_channels=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.fc(pixel_values)


def test_all_fail_lists_every_shape_with_its_input_name() -> None:
    with pytest.raises(NeurodiagError) as info:
        choose_recipe(_RejectsEverything())
    message = str(info.value)
    assert "\n" not in message
    assert (
        "(pixel_values (B, 1, 48, 48) float32; pixel_values (B, 1, 32, 32) float32; "
        "pixel_values (B, 1, 224, 224) float32)"
    ) in message


def test_forward_error_describes_a_hugging_face_model_by_its_main_input() -> None:
    model = build("wav2vec2_model")
    with pytest.raises(NeurodiagError) as info:
        neurodiag.scan(model, [{"input_values": torch.zeros(2, 3, 4, 5)}])
    message = str(info.value)
    assert "input_values (2, 3, 4, 5) float32" in message
    assert "the model's forward takes e.g. input_values (B, 16000) float32" in message
    assert "(batch, 1, L)" not in message  # the Conv1d inside is not what the forward takes
