"""README.md's and docs/training.md's Python blocks, run as pasted (issue 26: the Lightning
snippet had no imports and no ``max_epochs``, so it failed, then ran 1000 epochs; the Hugging
Face callback's import path was nowhere).

A block may use what the page says is the user's own: ``model``, ``loader``, ``loss_fn``,
``optimizer``, ``epochs`` (a training loop), ``module`` (a LightningModule), ``hf_model`` and
``dataset`` (a Hugging Face model and training set). Those are tiny stand-ins here; anything
else (imports, ``max_epochs``) must be in the block itself.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
_PYTHON = re.compile(r"```python\n(.*?)```", re.DOTALL)
BLOCKS = [
    (f"{page}#{i}", block)
    for page in ("README.md", "docs/training.md")
    for i, block in enumerate(_PYTHON.findall((ROOT / page).read_text("utf-8")))
]


def _model() -> nn.Module:
    features = nn.Sequential(OrderedDict(linear=nn.Linear(4, 8), relu=nn.ReLU()))
    return nn.Sequential(OrderedDict(features=features, head=nn.Linear(8, 2)))


def _loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g))] * 3


def _lightning_module() -> Any:
    pl = pytest.importorskip("lightning.pytorch")

    class Module(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def training_step(self, batch: Any, idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self) -> Any:
            x, y = (torch.cat(part) for part in zip(*_loader(), strict=True))
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)

    return Module()


def _hugging_face() -> tuple[Any, list[dict[str, torch.Tensor]]]:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=20, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    rows = [
        {"input_ids": torch.randint(0, 30, (8,)), "labels": torch.tensor(i % 2)} for i in range(8)
    ]
    return transformers.BertForSequenceClassification(config), rows


def _user_things(block: str) -> dict[str, Any]:
    model = _model()
    things: dict[str, Any] = {
        "model": model,
        "loader": _loader(),
        "loss_fn": F.cross_entropy,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "epochs": 2,
    }
    if re.search(r"\bmodule\b", block):
        things["module"] = _lightning_module()
    if "hf_model" in block:
        things["hf_model"], things["dataset"] = _hugging_face()
    return things


def test_the_pages_show_the_callbacks_with_their_imports() -> None:
    text = "".join(block for _, block in BLOCKS)
    assert "from neurodiag.integrations.huggingface import NeurodiagTrainerCallback" in text
    for _, block in BLOCKS:
        if "lightning.Trainer(" in block:
            assert "import lightning" in block and "max_epochs=1" in block


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("where", "block"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_python_block_runs_as_pasted(
    where: str, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # logs/ and out/ land here
    namespace = _user_things(block)
    exec(compile(block, where, "exec"), namespace)
    if "trainer" in namespace and hasattr(namespace["trainer"], "current_epoch"):
        assert namespace["trainer"].current_epoch == 1  # max_epochs=1: one epoch, not 1000
