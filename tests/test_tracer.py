"""One functional-site tracer: a scan and a swap name every site alike, whatever wraps the model."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurodiag import scan
from neurodiag.sites.tracer import strip_wrapper
from neurodiag.swap import SWAP_ATTRIBUTE, swap_with_report


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.act(self.fc(x)))  # a module site, then a functional one


class Net(nn.Module):
    """Functional sites in the root and in a child, an in-place one, and module sites."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.block = Block()
        self.head = nn.Linear(6, 3)
        self.fail = False

    def forward(self, x: Tensor) -> Tensor:
        h = self.block(F.relu(self.fc(x)))
        if self.fail:
            raise RuntimeError("boom")
        return self.head(F.gelu(h).relu_())


class Wrapper(nn.Module):
    """Holds the model under ``attribute``, as DDP (``module``) or FSDP do."""

    def __init__(self, inner: nn.Module, attribute: str) -> None:
        super().__init__()
        self.add_module(attribute, inner)
        self.attribute = attribute

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.get_submodule(self.attribute)(x)
        return out


def _fsdp_style(model: nn.Module) -> nn.Module:
    """FSDP wraps each block: ``block._fsdp_wrapped_module.fc``."""
    model.block = Wrapper(model.block, "_fsdp_wrapped_module")
    return model


WRAPS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "plain": lambda m: m,
    "ddp_style": lambda m: Wrapper(m, "module"),
    "data_parallel": nn.DataParallel,  # on CPU it just calls .module: names "module.…"
    "fsdp_style": _fsdp_style,
    "checkpoint_style": lambda m: Wrapper(m, "_checkpoint_wrapped_module"),
}

SITES = ["<root>:relu#0", "block.act", "block:tanh#0", "<root>:gelu#0", "<root>:relu#1"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("module", ""),
        ("module.block.act", "block.act"),
        ("block._orig_mod.act", "block.act"),
        ("module._orig_mod.block._fsdp_wrapped_module.act", "block.act"),
        ("layers.0._checkpoint_wrapped_module.mlp", "layers.0.mlp"),
        ("block.module.act", "block.module.act"),  # only the outermost level is DDP's
        ("modules.act", "modules.act"),
        ("", ""),
    ],
)
def test_strip_wrapper(name: str, expected: str) -> None:
    assert strip_wrapper(name) == expected


@pytest.mark.parametrize("wrap", WRAPS.values(), ids=WRAPS.keys())
def test_scan_and_swap_name_every_site_alike(wrap: Callable[[nn.Module], nn.Module]) -> None:
    """The sites of a wrapped model are the plain model's, for a scan and a swap alike, and the
    swap replaces what it names (the plain model swapped the same way computes the same)."""
    torch.manual_seed(0)
    plain = Net()
    x = torch.randn(5, 4)
    model = wrap(copy.deepcopy(plain))
    assert list(scan(model, [x]).to_frame()["site"]) == SITES
    result = swap_with_report(model, "selu", example_batch=x)
    swapped = [(site.site, site.kind) for site in result.swapped]
    assert swapped == [
        ("block.act", "module"),
        ("<root>:relu#0", "functional"),
        ("block:tanh#0", "functional"),
        ("<root>:gelu#0", "functional"),
    ]
    assert result.not_swapped == [("<root>:relu#1", "in-place functional call (x.relu_() style)")]
    reference = swap_with_report(plain, "selu", example_batch=x).model
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), reference(x))
        assert not torch.allclose(result.model(x), plain(x))
    frame = scan(result.model, [x]).to_frame()
    assert list(frame["site"]) == [
        f"{SWAP_ATTRIBUTE}.<root>:relu#0",
        "block.act",
        f"{SWAP_ATTRIBUTE}.block:tanh#0",
        f"{SWAP_ATTRIBUTE}.<root>:gelu#0",
        "<root>:relu#0",  # the in-place relu_, renumbered: the swapped calls no longer happen
    ]
    assert set(frame["activation"]) == {"selu", "relu"}


def test_swap_without_example_batch_uses_the_scan_names() -> None:
    result = swap_with_report(Wrapper(Net(), "module"), "selu", sites=["block.act"])
    assert [site.site for site in result.swapped] == ["block.act"]
    assert isinstance(result.model.get_submodule("module.block.act"), nn.SELU)


def test_a_forward_that_raised_leaves_no_mode_and_counts_afresh() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    model = Net()
    swapped = swap_with_report(model, "selu", example_batch=x).model
    expected = swapped(x)
    swapped.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        swapped(x)
    assert torch._C._len_torch_function_stack() == 0
    swapped.fail = False
    torch.testing.assert_close(swapped(x), expected)


def test_a_swapped_model_pickles_with_its_routes() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    swapped = swap_with_report(Net(), "selu", example_batch=x).model
    expected = swapped(x)
    again = pickle.loads(pickle.dumps(swapped))
    torch.testing.assert_close(again(x), expected)
    router = again.get_submodule(SWAP_ATTRIBUTE)
    assert router.tracer.registry is swapped.get_submodule(SWAP_ATTRIBUTE).tracer.registry
