"""Hugging Face architectures from tiny configs, scanned with no data (issue 12's "done when").

For every site the neuron count must equal the features of the layer feeding it. The expected
count is found independently of neurodiag's axis rules: forward hooks note which autograd node
each Linear/Conv/Embedding output came from, and a walk back through the autograd graph from the
site's input finds the nearest one.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from typer.testing import CliRunner

import neurodiag
from neurodiag.cli import app
from neurodiag.loading import load_data

pytest.importorskip("transformers")

from tests.fixtures.hf_models import HF_MODELS, build

#: One name per function: what the activation column may say for these models.
CANONICAL = {"gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "relu"}


class _Calls(TorchFunctionMode):
    """The first argument of every F.gelu / F.silu call (functional sites, in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[Tensor] = []
        self.inside_module_site = 0  # calls inside an activation module belong to it

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        gelu_or_silu = func in (torch.nn.functional.gelu, torch.nn.functional.silu)
        if gelu_or_silu and not self.inside_module_site:
            self.inputs.append(args[0])
        return func(*args, **(kwargs or {}))


def _feeding_features(model: nn.Module, batch: Any, report: neurodiag.Report) -> dict[str, int]:
    """Site -> out features of the nearest Linear/Conv/Embedding upstream of its input."""
    produced: list[tuple[Any, int]] = []
    site_inputs: dict[str, Tensor] = {}
    handles = []
    modules = dict(model.named_modules())

    def note_layer(module: nn.Module, args: Any, out: Tensor) -> None:
        features = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
        features = features or module.embedding_dim  # type: ignore[union-attr]
        produced.append((out.grad_fn, int(features)))

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)):
            handles.append(module.register_forward_hook(note_layer))
    calls = _Calls()

    def leave(module: nn.Module, args: Any, out: Any) -> None:
        calls.inside_module_site -= 1

    for site in report.sites:
        if site in modules:

            def note_input(module: nn.Module, args: Any, site: str = site) -> None:
                site_inputs[site] = args[0]
                calls.inside_module_site += 1

            handles.append(modules[site].register_forward_pre_hook(note_input))
            handles.append(modules[site].register_forward_hook(leave))
    try:
        with calls, torch.enable_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    functional = [s for s in report.sites if s not in modules]
    site_inputs.update(zip(functional, calls.inputs, strict=True))
    expected = {}
    for site, z in site_inputs.items():
        queue, seen = deque([z.grad_fn]), set()
        while queue:
            node = queue.popleft()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            hit = next((f for n, f in produced if n is node), None)
            if hit is not None:
                expected[site] = hit
                break
            queue.extend(next_node for next_node, _ in node.next_functions)
    return expected


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_no_data_scan_counts_the_features_of_the_feeding_layer(name: str) -> None:
    model = build(name)
    source = load_data(None, model=model, batch_size=2, num_batches=1)
    report = neurodiag.scan(model, source.batches)
    assert report.rows, name
    batch = next(iter(source.batches))
    expected = _feeding_features(model, batch, report)
    assert set(expected) == set(report.sites)
    assert {site: report.row(site)["neurons"] for site in report.sites} == expected
    assert {str(row["activation"]) for row in report.rows} <= CANONICAL
    assert not any("neuron dim" in note for note in report.header.notes)


def test_efficientnet_squeeze_excite_sigmoids_are_gates() -> None:
    report = neurodiag.scan(build("efficientnet"), load_data(None, model=build("efficientnet"),
                            batch_size=2, num_batches=1).batches)  # fmt: skip
    gates = {row["site"] for row in report.rows if row["role"] == "gate"}
    assert gates and all(site.endswith("squeeze_excite.act_expand") for site in gates)
    assert all(row["activation"] == "sigmoid" for row in report.rows if row["site"] in gates)


@pytest.mark.parametrize("length", [3, 7])
def test_mamba_dt_softplus_counts_the_dt_proj_rows(length: int) -> None:
    """Issue 26.5: ``dt_proj.weight @ x`` puts the weight on the left: intermediate_size
    neurons on dim 1 at any sequence length (was: the sequence length, dim 2)."""
    model = build("mamba")
    ids = torch.randint(0, 50, (2, length), generator=torch.Generator().manual_seed(0))
    report = neurodiag.scan(model, [{"input_ids": ids}])
    row = report.row("layers.0.mixer:softplus#0")
    intermediate = model.config.intermediate_size
    assert (row["neurons"], row["feature_dim"]) == (intermediate, 1)
    assert all(r["neurons"] == intermediate for r in report.rows)


def test_mamba2_dt_softplus_is_a_gate_per_head() -> None:
    """Issue 26.5: ``x * softplus(dt)[..., None]``: indexing with None keeps the gate rule."""
    model = build("mamba2")
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(0))
    row = neurodiag.scan(model, [{"input_ids": ids}]).row("layers.0.mixer:softplus#0")
    assert (row["role"], row["neurons"]) == ("gate", model.config.num_heads)


@pytest.mark.parametrize("name", ["mixtral", "mixtral_eager"])
def test_mixtral_expert_sites_are_one_per_expert(name: str) -> None:
    """Issue 26.5: experts × units, one site per expert id (tests/test_moe.py checks the counts)."""
    model = build(name)
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(0))
    report = neurodiag.scan(model, [{"input_ids": ids}])
    expert_sites = [s for s in report.sites if ".experts." in s]
    assert expert_sites
    assert all(s.split(".experts.")[1].split(".")[0].isdigit() for s in expert_sites)
    assert not any("mixture-of-experts" in n for n in report.header.notes)


def test_a_shared_expert_activation_not_split_says_the_experts_are_merged() -> None:
    """An ``experts`` module whose routing is unknown to us keeps one merged site, noted."""
    experts = nn.Module()
    experts.proj = nn.Linear(4, 8)
    experts.act_fn = nn.SiLU()
    experts.forward = lambda x: experts.act_fn(experts.proj(x))  # type: ignore[method-assign]
    model = nn.Sequential()
    model.add_module("experts", experts)
    report = neurodiag.scan(model, [torch.randn(3, 4)])
    assert report.sites == ["experts.act_fn"]
    (note,) = [n for n in report.header.notes if "mixture-of-experts" in n]
    assert "1 mixture-of-experts site(s)" in note and "experts.act_fn" in note


def test_per_expert_modules_are_not_called_merged() -> None:
    experts = nn.ModuleList(nn.Sequential(nn.Linear(4, 8), nn.SiLU()) for _ in range(2))
    model = nn.Module()
    model.experts = experts
    model.forward = lambda x: experts[0](x) + experts[1](x)  # type: ignore[method-assign]
    report = neurodiag.scan(model, [torch.randn(3, 4)])
    assert report.sites == ["experts.0.1", "experts.1.1"]
    assert not any("mixture-of-experts" in n for n in report.header.notes)


def test_rwkv_eval_mode_error_suggests_train_mode() -> None:
    """Issue 26.6: RWKV's eval-mode backward fails on its in-place state; train mode works."""
    model = build("rwkv")
    batches = [{"input_ids": torch.randint(0, 50, (2, 5), generator=torch.Generator())}]
    with pytest.raises(neurodiag.NeurodiagError, match="--mode train"):
        neurodiag.scan(model, batches)
    assert neurodiag.scan(model, batches, mode="train").rows


MODEL_FILE = """
from tests.fixtures.hf_models import build

def build_model():
    return build({name!r})
"""


@pytest.mark.parametrize("name", ["convnext", "swin", "whisper", "wav2vec2", "vit64"])
def test_cli_scan_without_data_exits_0(name: str, tmp_path: Path, monkeypatch: Any) -> None:
    """The issue's "done when", through the real command: no --data, exit 0, one GELU name."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    path = tmp_path / f"{name}.py"
    path.write_text(MODEL_FILE.format(name=name))
    args = ["scan", str(path), "--batch-size", "2", "--max-batches", "1", "--format", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["data"].startswith("synthetic ")
    gelu = {site["activation"] for site in document["sites"] if "gelu" in site["activation"]}
    assert gelu == {"gelu"}
    assert all(isinstance(site["feature_dim"], int) for site in document["sites"])
