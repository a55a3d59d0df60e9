"""Framework callbacks (run where Lightning / transformers+accelerate are installed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import neurodiag
from tests.test_scan_behaviour import _hook_counts


def test_monitor_pause_and_resume_measure_only_resumed_steps() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = _hook_counts(model)
    with neurodiag.Monitor(model) as monitor:
        model(torch.randn(2, 3)).sum().backward()
        monitor.pause()
        assert _hook_counts(model) == before
        model(torch.randn(2, 3))  # an evaluation pass: not measured
        monitor.resume()
        model(torch.randn(2, 3)).sum().backward()
    assert monitor.steps == 2 and monitor.report().sites == ["1"]
    assert _hook_counts(model) == before


def test_lightning_callback() -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from neurodiag.integrations.lightning import NeurodiagCallback

    class Module(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
            self(batch[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    )
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    module = Module()
    callback = NeurodiagCallback()
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=2,
    )
    before = _hook_counts(module)
    trainer.fit(module, loader, loader)
    assert callback.report is not None
    assert callback.report.sites == ["net.1"]
    assert callback.report.header.batches == 8  # 2 epochs x 4 training batches, no validation
    assert "neurodiag/mean_dead_pct" in trainer.callback_metrics
    assert _hook_counts(module) == before


def test_huggingface_trainer_callback(tmp_path: object) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from neurodiag.integrations.huggingface import NeurodiagTrainerCallback

    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": torch.randint(0, 30, (8,), generator=g), "labels": torch.tensor(i % 2)}
        for i in range(16)
    ]
    callback = NeurodiagTrainerCallback()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=2,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])
    before = _hook_counts(model)
    trainer.train()
    assert callback.report is not None
    assert callback.report.sites == [
        "bert.encoder.layer.0.intermediate.intermediate_act_fn",
        "bert.pooler.activation",
    ]
    assert callback.report.header.batches == 4
    assert _hook_counts(model) == before


def test_soft_pause_keeps_hooks_inert_and_still_discovers_functional_sites() -> None:
    """pause(detach=False), as the callbacks use it: hooks stay, paused passes are not steps,
    and a first forward while paused does not end site discovery (functional sites found later).
    """
    from tests.fixtures.models import ZOO, make_batches

    torch.manual_seed(0)
    model = ZOO["functional"]().double().eval()
    batches = make_batches("functional", model, n_batches=4)
    expected = neurodiag.scan(model, batches[1:3]).to_frame()
    before = _hook_counts(model)
    with neurodiag.Monitor(model) as monitor:
        monitor.pause(detach=False)
        model(batches[0][0])  # e.g. a sanity-check pass before training: not measured
        assert _hook_counts(model) != before  # still attached, only inert
        for x, y in batches[1:3]:
            monitor.resume()
            F.cross_entropy(model(x), y).backward()
            monitor.pause(detach=False)
        model(batches[3][0])  # an evaluation pass: not measured
    got = monitor.report().to_frame()
    assert _hook_counts(model) == before
    assert monitor.steps == 2
    assert list(got["site"]) == list(expected["site"])
    for column in ("dead_pct", "dormant_pct", "grad_dormant_pct", "nonfinite"):
        assert list(got[column]) == list(expected[column]), column
    assert got["mag"].tolist() == pytest.approx(expected["mag"].tolist(), rel=1e-9)
