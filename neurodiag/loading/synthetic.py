"""Synthetic input batches inferred from the model, for scans without a data spec.

Inference, first match wins (``neurodiag.loading.declared`` reads what the model declares):
1. a Hugging Face model (a ``config`` and a main input: ``main_input_name`` if its forward takes
   it, else the first of ``input_ids``, ``pixel_values``, ``input_values``, ``input_features`` in
   the forward's signature; ``config.vocab_size`` alone still means ``input_ids``). Dict batches:
   - ``input_ids``: (B, T) int64 in [0, vocab_size), T = 16 (at most ``max_position_embeddings``),
     plus ``attention_mask`` ones when the forward takes one. So that the model returns its own
     ``.loss``, ``labels`` are added for ``*ForSequenceClassification`` (random class ids; float
     values when ``num_labels == 1``) and for language-model heads (``*LMHeadModel``,
     ``*ForCausalLM``, ``*ForMaskedLM``, ``*ForConditionalGeneration``: ``labels = input_ids``).
     An encoder-decoder base model also gets ``decoder_input_ids``.
   - ``pixel_values``: (B, C, H, W) standard normal, C = ``config.num_channels`` (else 3), H, W
     the declared image size (``config.image_size``...), then 32 and 224 px; class ids as
     ``labels`` for ``*ForImageClassification``.
   - ``input_values`` (Wav2Vec2-style raw audio): (B, 16000) standard normal, then 48000.
   - ``input_features`` (Whisper): (B, num_mel_bins, 2 · max_source_positions), then 3000 frames;
     ``decoder_input_ids`` (B, 4), or token ``labels`` for ``*ForConditionalGeneration``.
2. the first layer in ``model.modules()`` (registration order) that is
   - ``nn.Linear``: standard normal ``(B, in_features)``;
   - ``nn.Conv1d/2d/3d`` (or transposed): standard normal ``(B, C, *spatial)``; spatial 64, then
     1024 for 1-d; the declared image size (``image_size``/``img_size`` on the model or its
     config, timm's ``pretrained_cfg``/``default_cfg`` ``input_size``, ``patch_embed.img_size``),
     then 32x32, then 224x224 for 2-d; 16x16x16, then 32x32x32 for 3-d;
   - ``nn.Embedding``/``nn.EmbeddingBag``: int64 token ids in ``[0, num_embeddings)``, ``(B, 16)``.
When there is more than one candidate shape, the first that the model's forward accepts wins:
each is tried on a batch of 2 in eval mode without gradients, the model's state (modes, buffers,
``.grad``) and the global RNG restored afterwards; if none is accepted, the error lists every
shape tried with its input names. ``input_shape`` (without the batch dim) replaces the inferred
shape of the main input (no fallbacks), keeping its dtype rule; it also lets models without a
recognised first layer be scanned. Synthetic batches carry no targets: the scan then uses its
documented surrogate loss. Default: 4 batches; every pass regenerates the same batches from a
``torch.Generator`` seeded with ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.errors import NeurodiagError
from neurodiag.loading.datasource import DataOptions, DataSource
from neurodiag.loading.declared import (
    declared_channels,
    declared_image_size,
    forward_parameters,
    main_input,
)
from neurodiag.model_state import model_device, model_dtype, preserved

DEFAULT_NUM_BATCHES = 4
SEQUENCE_LENGTH = 16
DECODER_LENGTH = 4
PROBE_BATCH = 2
_CONV_SPATIAL: dict[int, list[tuple[int, ...]]] = {
    1: [(64,), (1024,)],
    2: [(32, 32), (224, 224)],
    3: [(16, 16, 16), (32, 32, 32)],
}
_AUDIO_LENGTHS = (16000, 48000)
_WHISPER_FRAMES = 3000
_LM_SUFFIXES = ("LMHeadModel", "ForCausalLM", "ForMaskedLM", "ForConditionalGeneration")


@dataclass(frozen=True)
class InputSpec:
    """One input tensor: its forward keyword (None: the one positional input) and contents."""

    name: str | None
    shape: tuple[int, ...]
    vocab: int | None = None  # token ids in [0, vocab) when set
    ones: bool = False  # an attention mask

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        shape = (batch_size, *self.shape)
        if self.ones:
            return torch.ones(shape, dtype=torch.int64)
        if self.vocab is not None:
            return torch.randint(0, self.vocab, shape, generator=generator)
        return torch.randn(shape, generator=generator)

    def describe(self) -> str:
        """``pixel_values (B, 3, 32, 32) float32`` (how the error lists a tried shape)."""
        dtype = "int64" if self.ones or self.vocab is not None else "float32"
        shape = ", ".join(["B", *(str(d) for d in self.shape)])
        return f"{self.name + ' ' if self.name else ''}({shape}) {dtype}"

    def contents(self) -> str:
        if self.ones:
            return "ones"
        return "standard normal" if self.vocab is None else f"token ids in [0, {self.vocab})"


@dataclass(frozen=True)
class InputRecipe:
    """What one synthetic batch looks like, and where that was inferred from."""

    inputs: tuple[InputSpec, ...]
    origin: str
    labels: str | None = None  # None, "classes", "regression", "tokens" or "decoder_tokens"
    num_labels: int = 2
    label_vocab: int | None = None  # for "decoder_tokens"

    @property
    def named(self) -> bool:
        return any(spec.name is not None for spec in self.inputs)

    def sample(self, batch_size: int, generator: torch.Generator) -> Any:
        """One batch, drawn from ``generator``: a tensor, or a dict of named inputs."""
        if not self.named:
            return self.inputs[0].sample(batch_size, generator)
        batch: dict[str, Tensor] = {
            str(spec.name): spec.sample(batch_size, generator) for spec in self.inputs
        }
        if self.labels == "classes":
            batch["labels"] = torch.randint(0, self.num_labels, (batch_size,), generator=generator)
        elif self.labels == "regression":
            batch["labels"] = torch.randn(batch_size, generator=generator)
        elif self.labels == "tokens":
            batch["labels"] = batch["input_ids"].clone()
        elif self.labels == "decoder_tokens" and self.label_vocab is not None:
            shape = (batch_size, DECODER_LENGTH)
            batch["labels"] = torch.randint(0, self.label_vocab, shape, generator=generator)
        return batch

    def describe(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs)

    def contents(self) -> str:
        """``(B, 4) standard normal`` or ``pixel_values (B, 3, 64, 64) standard normal, ...``."""
        parts = []
        for spec in self.inputs:
            shape = ", ".join(["B", *(str(d) for d in spec.shape)])
            name = f"{spec.name} " if spec.name else ""
            parts.append(f"{name}({shape}) {spec.contents()}")
        return ", ".join(parts) + (" + labels" if self.labels is not None else "")


def _single(shape: tuple[int, ...], vocab: int | None, origin: str) -> InputRecipe:
    return InputRecipe((InputSpec(None, shape, vocab),), origin)


def candidate_recipes(
    model: nn.Module, input_shape: tuple[int, ...] | None = None
) -> list[InputRecipe]:
    """Every recipe to try for ``model``, in order (see the module docstring)."""
    recipes = _hf_recipes(model, input_shape)
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


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return int(value)


def _hf_recipes(model: nn.Module, input_shape: tuple[int, ...] | None) -> list[InputRecipe]:
    config = getattr(model, "config", None)
    if config is None:
        return []
    vocab = _int(getattr(config, "vocab_size", None))
    main = main_input(model) or ("input_ids" if vocab is not None else None)
    if main is None:
        return []
    params = forward_parameters(model)
    kind = type(model).__name__
    origin = f"{kind}.config"
    num_labels = _int(getattr(config, "num_labels", 2)) or 2
    takes_labels = "labels" in params or not params
    if main == "input_ids":
        if vocab is None:
            return []
        return [_text_recipe(model, config, vocab, params, input_shape, origin, num_labels)]
    classes = "classes" if takes_labels and kind.endswith("Classification") else None
    if main == "pixel_values":
        channels = declared_channels(model) or 3
        sizes: list[tuple[tuple[int, ...], str]] = []
        if input_shape is not None:
            sizes = [(input_shape, origin)]
        else:
            declared = declared_image_size(model)
            if declared is not None:
                sizes.append(((channels, *declared[0]), declared[1]))
            sizes += [
                ((channels, *s), origin)
                for s in _CONV_SPATIAL[2]
                if (channels, *s) not in [shape for shape, _ in sizes]
            ]
        return [
            InputRecipe((InputSpec("pixel_values", s),), where, classes, num_labels)
            for s, where in sizes
        ]
    if main == "input_values":
        shapes = [input_shape] if input_shape else [(n,) for n in _AUDIO_LENGTHS]
        labels = classes if kind.endswith("SequenceClassification") else None
        return [
            InputRecipe((InputSpec("input_values", s),), origin, labels, num_labels) for s in shapes
        ]
    # input_features (Whisper-style log-mel spectrograms)
    mel = _int(getattr(config, "num_mel_bins", None)) or 80
    positions = _int(getattr(config, "max_source_positions", None))
    frames = [2 * positions] if positions else []
    frames += [f for f in (_WHISPER_FRAMES,) if f not in frames]
    feature_shapes: list[tuple[int, ...]] = (
        [input_shape] if input_shape else [(mel, f) for f in frames]
    )
    extra: tuple[InputSpec, ...] = ()
    labels = None
    if "decoder_input_ids" in params and vocab is not None:
        if kind.endswith("ForConditionalGeneration") and takes_labels:
            labels = "decoder_tokens"
        else:
            extra = (InputSpec("decoder_input_ids", (DECODER_LENGTH,), vocab),)
    elif classes and kind.endswith("SequenceClassification"):
        labels = classes
    return [
        InputRecipe((InputSpec("input_features", s), *extra), origin, labels, num_labels, vocab)
        for s in feature_shapes
    ]


def _text_recipe(
    model: nn.Module,
    config: Any,
    vocab: int,
    params: tuple[str, ...],
    input_shape: tuple[int, ...] | None,
    origin: str,
    num_labels: int,
) -> InputRecipe:
    length = SEQUENCE_LENGTH
    max_positions = _int(getattr(config, "max_position_embeddings", None))
    if max_positions is not None:
        length = min(length, max_positions)
    shape = input_shape or (length,)
    kind = type(model).__name__
    labels = None
    if kind.endswith("ForSequenceClassification"):
        labels = "regression" if num_labels == 1 else "classes"
    elif kind.endswith(_LM_SUFFIXES):
        labels = "tokens"
    specs = [InputSpec("input_ids", shape, vocab)]
    if "attention_mask" in params or not params:
        specs.append(InputSpec("attention_mask", shape, ones=True))
    if "decoder_input_ids" in params and labels != "tokens":
        specs.append(InputSpec("decoder_input_ids", shape, vocab))
    return InputRecipe(tuple(specs), origin, labels, num_labels)


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
