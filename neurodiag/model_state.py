"""Guarantee that a scan leaves the user's model exactly as it found it.

Weights are never written; what a forward/backward can change is restored in ``finally``: the
training flag of every module, buffers (BatchNorm running stats in train mode), ``requires_grad``
and ``.grad`` of every parameter, and the global RNG state (via ``torch.random.fork_rng``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    training = [(m, m.training) for m in model.modules()]
    buffers = [
        (module, name, buf, buf.detach().clone())
        for module in model.modules()
        for name, buf in module._buffers.items()
        if buf is not None
    ]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, flag in training:
            module.training = flag
        with torch.no_grad():
            for module, name, original, copy in buffers:
                module._buffers[name] = original
                if not torch.equal(original, copy):
                    original.copy_(copy)
        for param, requires_grad, grad in params:
            param.requires_grad_(requires_grad)
            param.grad = grad


def model_device(model: nn.Module) -> torch.device:
    """Where the model lives: its first parameter's (or buffer's) device, else the CPU."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype inputs are cast to: its first floating parameter's, else torch's default."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()
