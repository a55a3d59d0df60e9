"""What a model declares about its inputs: image size, channels, Hugging Face input names.

Read from attributes only (nothing is called): ``image_size``/``img_size`` on the model, its
``config`` or the config's ``vision_config`` (an int or ``(H, W)``), timm's
``pretrained_cfg``/``default_cfg`` ``input_size`` ``(C, H, W)``, a timm ViT's
``patch_embed.img_size``, Hugging Face ``num_channels``; the forward's parameter names
(``inspect.signature``) and Hugging Face ``main_input_name``. A composite Hugging Face config
(CLIP-like) keeps a modality's fields in ``text_config``/``vision_config``/``audio_config``:
``config_value`` looks there after the config itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

#: Hugging Face main inputs neurodiag can synthesise, in the order a forward is searched.
MAIN_INPUTS = ("input_ids", "pixel_values", "input_values", "input_features")


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return (value, value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) >= 2:
        tail = value[-2:]
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in tail):
            return (int(tail[0]), int(tail[1]))
    return None


#: Where a composite Hugging Face config keeps each modality's fields.
SUB_CONFIGS = ("text_config", "vision_config", "audio_config")


def config_value(config: Any, name: str, *subconfigs: str) -> Any:
    """``config.<name>``, else the first ``config.<sub>.<name>`` that is set (None if none)."""
    value = getattr(config, name, None)
    for sub in subconfigs:
        if value is not None:
            break
        value = getattr(getattr(config, sub, None), name, None)
    return value


def declared_image_size(model: nn.Module) -> tuple[tuple[int, int], str] | None:
    """((H, W), where it was read) from the model's attributes and configs, if declared."""
    config = getattr(model, "config", None)
    patch_embed = getattr(model, "patch_embed", None)
    kind = type(model).__name__
    places: list[tuple[Any, str]] = [
        (model, kind),
        (config, f"{kind}.config"),
        (getattr(config, "vision_config", None), f"{kind}.config.vision_config"),
        (patch_embed, f"{kind}.patch_embed"),
    ]
    for owner, label in places:
        if owner is None:
            continue
        for attr in ("image_size", "img_size"):
            size = _size(getattr(owner, attr, None))
            if size is not None:
                return size, f"{label}.{attr}"
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict):
            size = _size(cfg.get("input_size"))
            if size is not None:
                return size, f"{type(model).__name__}.{attr}['input_size']"
    return None


def declared_channels(model: nn.Module) -> int | None:
    """Image channels from a Hugging Face config or timm's ``input_size`` (C, H, W)."""
    channels = config_value(getattr(model, "config", None), "num_channels", "vision_config")
    if isinstance(channels, int) and not isinstance(channels, bool) and channels > 0:
        return channels
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if isinstance(size, Sequence) and len(size) == 3 and isinstance(size[0], int):
            return int(size[0])
    return None


def conv_min_length(config: Any, frames: int = 2) -> int | None:
    """Fewest raw-audio samples a Wav2Vec2-style conv feature extractor (``conv_kernel``,
    ``conv_stride``) turns into ``frames`` frames; None when the config declares no such stack."""
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if not isinstance(kernels, Sequence) or not isinstance(strides, Sequence):
        return None
    if not kernels or len(kernels) != len(strides):
        return None
    if not all(isinstance(v, int) and v > 0 for v in (*kernels, *strides)):
        return None
    length = frames
    for kernel, stride in zip(reversed(kernels), reversed(strides), strict=True):
        length = (length - 1) * stride + kernel  # the shortest input giving `length` outputs
    return int(length)


def forward_parameters(model: nn.Module) -> tuple[str, ...]:
    """Names of the forward's parameters (empty when it has no inspectable signature)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return ()
    return tuple(signature.parameters)


def unknown_keywords(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The ``names`` the forward has no parameter for ([] if it takes ``**kwargs`` or has no
    inspectable signature): what a named-inputs file got wrong."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return [name for name in names if name not in parameters]


def main_input(model: nn.Module) -> str | None:
    """The Hugging Face main input: ``main_input_name`` if the forward takes it, else the first
    of ``MAIN_INPUTS`` in the signature; None for a model without a ``config``."""
    if getattr(model, "config", None) is None:
        return None
    params = forward_parameters(model)
    name = getattr(model, "main_input_name", None)
    if isinstance(name, str) and name in MAIN_INPUTS and name in params:
        return name
    return next((n for n in MAIN_INPUTS if n in params), None)


__all__ = [
    "MAIN_INPUTS",
    "SUB_CONFIGS",
    "config_value",
    "conv_min_length",
    "declared_channels",
    "declared_image_size",
    "forward_parameters",
    "main_input",
    "unknown_keywords",
]
