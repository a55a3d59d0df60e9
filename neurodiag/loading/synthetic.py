"""Synthetic input batches inferred from the model, for scans without a data spec.

Inference, first match wins (``neurodiag.loading.declared`` reads what the model declares):
1. a Hugging Face model (a ``config`` and a main input: ``main_input_name`` if its forward takes
   it, else the first of ``input_ids``, ``pixel_values``, ``input_values``, ``input_features`` in
   the forward's signature; ``config.vocab_size`` alone still means ``input_ids``): dict batches
   named after the forward's keywords, shapes from the config. The rules, per main input, are
   the docstring of ``neurodiag.loading.hf_inputs``: in short ``input_ids`` (B, 16) + an
   ``attention_mask``; ``pixel_values`` (B, C, H, W) at the declared size, then 32 and 224 px;
   ``input_values`` (B, 16000) raw audio (or a spectrogram / multi-channel layout the config
   declares); ``input_features`` (B, num_mel_bins, 2 · max_source_positions) for Whisper, then
   other frame counts and layouts; ``decoder_input_ids`` or ``labels`` for encoder-decoders;
   ``labels`` for classification and language-model heads, so the model returns its own loss.
2. the first layer in ``model.modules()`` (registration order) that is
   - ``nn.Linear``: standard normal ``(B, in_features)``;
   - ``nn.Conv1d/2d/3d`` (or transposed): standard normal ``(B, C, *spatial)``; spatial 64, then
     1024 for 1-d; the declared image size (``image_size``/``img_size`` on the model or its
     config, timm's ``pretrained_cfg``/``default_cfg`` ``input_size``, ``patch_embed.img_size``),
     then 32x32, then 224x224 for 2-d; 16x16x16, then 32x32x32 for 3-d;
   - ``nn.Embedding``/``nn.EmbeddingBag``: int64 token ids in ``[0, num_embeddings)``, ``(B, 16)``.
When there is more than one candidate shape, the first that the model's forward accepts wins:
each is tried in turn on a batch of 2 in eval mode without gradients, on the model's device and
dtype, with the model's state (train/eval flags, buffers such as BatchNorm running stats,
``requires_grad`` and ``.grad``) and the global (and accelerator) RNG restored afterwards, also
when the forward raises; a model that accepts the first candidate costs one such forward. If none
is accepted, the one-line error lists every shape tried with its input names. With a single
candidate nothing is probed: the scan's own forward error says what went wrong. ``input_shape``
(without the batch dim) replaces the inferred shape of the main input (no fallbacks), keeping its
dtype rule; it also lets models without a recognised first layer be scanned. Synthetic batches
carry no targets besides those ``labels``: the scan then uses its documented surrogate loss.
Default: 4 batches; every pass regenerates the same batches from a ``torch.Generator`` seeded
with ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.errors import NeurodiagError
from neurodiag.loading.datasource import DataOptions, DataSource
from neurodiag.loading.declared import declared_image_size
from neurodiag.loading.hf_inputs import hf_recipes
from neurodiag.loading.recipe import InputRecipe, InputSpec
from neurodiag.model_state import model_device, model_dtype, preserved

DEFAULT_NUM_BATCHES = 4
SEQUENCE_LENGTH = 16
PROBE_BATCH = 2
_CONV_SPATIAL: dict[int, list[tuple[int, ...]]] = {
    1: [(64,), (1024,)],
    2: [(32, 32), (224, 224)],
    3: [(16, 16, 16), (32, 32, 32)],
}


def _single(shape: tuple[int, ...], vocab: int | None, origin: str) -> InputRecipe:
    return InputRecipe((InputSpec(None, shape, vocab),), origin)


def candidate_recipes(
    model: nn.Module, input_shape: tuple[int, ...] | None = None
) -> list[InputRecipe]:
    """Every recipe to try for ``model``, in order (see the module docstring)."""
    model = _eager(model)
    recipes = hf_recipes(model, input_shape)
    if recipes:
        return recipes
    for name, layer in model.named_modules():
        recipes = _layer_recipes(model, name or "(root)", layer, input_shape)
        if recipes:
            return recipes
    if input_shape is not None:
        return [_single(input_shape, None, "input_shape")]
    raise NeurodiagError(
        f"cannot infer a synthetic input for {type(model).__name__}: no Linear, Conv or Embedding "
        "layer and no Hugging Face main input found; give input_shape, a data spec, or define "
        "make_data() in the model file"
    )


def infer_recipe(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> InputRecipe:
    """The first candidate recipe for ``model``, untried (``synthetic_source`` probes)."""
    return candidate_recipes(model, input_shape)[0]


def _layer_recipes(
    model: nn.Module, name: str, layer: nn.Module, input_shape: tuple[int, ...] | None
) -> list[InputRecipe]:
    origin = f"{type(layer).__name__} '{name}'"
    if isinstance(layer, (nn.Embedding, nn.EmbeddingBag)):
        return [_single(input_shape or (SEQUENCE_LENGTH,), layer.num_embeddings, origin)]
    if isinstance(layer, nn.Linear) and not isinstance(layer, nn.LazyLinear):
        return [_single(input_shape or (layer.in_features,), None, origin)]
    if isinstance(layer, nn.modules.conv._ConvNd) and not isinstance(
        layer, nn.modules.lazy.LazyModuleMixin
    ):
        if input_shape is not None:
            return [_single(input_shape, None, origin)]
        rank = len(layer.kernel_size)
        spatial = list(_CONV_SPATIAL.get(rank, []))
        declared = declared_image_size(model) if rank == 2 else None
        if declared is not None:
            spatial = [declared[0], *(s for s in spatial if s != declared[0])]
            origin = f"{origin}, {declared[1]}"
        return [_single((layer.in_channels, *s), None, origin) for s in spatial]
    return []


def _eager(model: nn.Module) -> nn.Module:
    """The module behind ``torch.compile`` (the scan runs that one; probing it compiles nothing)."""
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module) and type(model).__name__ == "OptimizedModule":
        return original
    return model


def _probe(model: nn.Module, recipe: InputRecipe) -> Exception | None:
    """Run one small batch of ``recipe`` through the model; the exception if it raised.

    Eval mode, no autograd, and everything the forward could change put back afterwards.
    """
    batch = recipe.sample(PROBE_BATCH, torch.Generator().manual_seed(0))
    device, dtype = model_device(model), model_dtype(model)

    def fed(t: Tensor) -> Tensor:
        return t.to(device, dtype) if t.is_floating_point() else t.to(device)

    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with preserved(model), torch.random.fork_rng(devices=rng_devices), torch.no_grad():
        model.eval()
        try:
            if isinstance(batch, dict):
                model(**{key: fed(value) for key, value in batch.items()})
            else:
                model(fed(batch))
        except Exception as exc:  # any failure means "not this shape": try the next
            return exc
    return None


def choose_recipe(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> InputRecipe:
    """The first candidate the model accepts (one probe forward per candidate tried)."""
    model = _eager(model)
    candidates = candidate_recipes(model, input_shape)
    if len(candidates) == 1:
        return candidates[0]  # nothing to choose: the scan's own error says what went wrong
    failures: list[tuple[InputRecipe, Exception]] = []
    for recipe in candidates:
        error = _probe(model, recipe)
        if error is None:
            return recipe
        failures.append((recipe, error))
    tried = "; ".join(recipe.describe() for recipe, _ in failures)
    last = failures[-1][1]
    message = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
    raise NeurodiagError(
        f"{type(model).__name__} accepted none of the synthetic inputs tried ({tried}); the last "
        f"raised {type(last).__name__}: {message}; give --input-shape or a data spec (--data)"
    )


class SyntheticBatches:
    """Re-iterable seeded batches, generated one at a time."""

    def __init__(self, recipe: InputRecipe, options: DataOptions) -> None:
        self.recipe = recipe
        self.batch_size = options.batch_size
        self.count = options.num_batches or DEFAULT_NUM_BATCHES
        self.seed = options.seed

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.count):
            yield self.recipe.sample(self.batch_size, generator)


def synthetic_source(model: nn.Module, options: DataOptions) -> DataSource:
    """A DataSource of synthetic batches for ``model`` (the first candidate it accepts)."""
    recipe = choose_recipe(model, options.input_shape)
    batches = SyntheticBatches(recipe, options)
    description = (
        f"synthetic {recipe.contents()} (from {recipe.origin}; "
        f"{batches.count} batches of {batches.batch_size}, seed {batches.seed})"
    )
    return DataSource(batches, description, batches.count * batches.batch_size)


__all__ = [
    "InputRecipe",
    "InputSpec",
    "candidate_recipes",
    "choose_recipe",
    "infer_recipe",
    "synthetic_source",
]
