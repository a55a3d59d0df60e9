"""Framework callbacks (run where Lightning / transformers+accelerate are installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _hf_trainer(tmp_path: object, callbacks: list[object], **args: object) -> object:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": torch.randint(0, 30, (8,), generator=g), "labels": torch.tensor(i % 2)}
        for i in range(16)
    ]
    options: dict[str, object] = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "num_train_epochs": 2,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "logging_steps": 2,
        "disable_tqdm": True,
        **args,
    }
    return transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(**options),
        train_dataset=rows,
        eval_dataset=rows[:4],
        callbacks=callbacks,
    )


SITES = ["bert.encoder.layer.0.intermediate.intermediate_act_fn", "bert.pooler.activation"]


def test_huggingface_metrics_reach_log_history_per_epoch(tmp_path: object) -> None:
    from neurodiag.integrations.huggingface import NeurodiagTrainerCallback

    callback = NeurodiagTrainerCallback()  # in callbacks=[...]: finds its Trainer itself
    trainer: Any = _hf_trainer(tmp_path, [callback], eval_strategy="epoch")
    before = _hook_counts(trainer.model)
    trainer.train()
    assert _hook_counts(trainer.model) == before
    logged = [entry for entry in trainer.state.log_history if "neurodiag/max_dead_pct" in entry]
    assert [entry["step"] for entry in logged] == [4, 8]  # one per epoch, 4 steps each
    key = f"neurodiag/{SITES[0]}/dead_pct"
    assert [entry[key] for entry in logged] == [
        w.report.row(SITES[0])["dead_pct"] for w in callback.history
    ]
    # each step is 4 samples; evaluation passes (eval_strategy="epoch") are not measured
    assert [(w.kind, w.epoch, w.batches, w.samples) for w in callback.history] == [
        ("epoch", 0, 4, 16),
        ("epoch", 1, 4, 16),
    ]
    assert callback.report is not None and callback.report.sites == SITES
    assert callback.report.header.batches == 8


def test_huggingface_alert_stops_training_when_asked(tmp_path: object) -> None:
    from neurodiag.integrations.huggingface import NeurodiagTrainerCallback

    callback = NeurodiagTrainerCallback(thresholds={"min_mag": 1e9}, stop_on_alert=True)
    trainer: Any = _hf_trainer(tmp_path, [callback], num_train_epochs=3)
    with pytest.warns(RuntimeWarning, match="neurodiag alert at"):
        trainer.train()
    assert trainer.state.global_step == 4  # epoch 0 ran, then training stopped
    assert {(a.metric, a.epoch, a.step) for a in callback.alerts} == {("mag", 0, 4)}


def test_huggingface_report_to_tensorboard_receives_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from neurodiag.integrations.huggingface import NeurodiagTrainerCallback

    logs = tmp_path / "out"  # the TensorBoard callback writes under output_dir/runs/...
    trainer: Any = _hf_trainer(
        logs,
        [],
        report_to=["tensorboard"],
        gradient_accumulation_steps=2,
        num_train_epochs=1,
    )
    callback = NeurodiagTrainerCallback.attach(trainer, every=1, per_site=False)
    trainer.train()
    (run,) = [p.parent for p in logs.rglob("events.out.tfevents.*")]
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = events.Scalars("train/neurodiag/max_dead_pct")
    assert [e.step for e in scalars] == [1, 2]  # every=1: each optimizer step
    # an accumulated step holds both micro-batches
    assert [(w.batches, w.samples) for w in callback.history] == [(1, 8), (1, 8)]


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


def test_huggingface_recycle_option_revives_dead_units(tmp_path: object) -> None:
    """recycle=True on the Trainer callback: the topology comes from the first optimizer step,
    the units killed before training are recycled when epoch 0's window closes (the optimizer's
    moments of those rows reset) and epoch 1 measures them alive."""
    from neurodiag.integrations.huggingface import NeurodiagTrainerCallback

    callback = NeurodiagTrainerCallback(per_site=False, recycle=True)
    trainer: Any = _hf_trainer(tmp_path, [callback])
    dense = trainer.model.bert.encoder.layer[0].intermediate.dense
    with torch.no_grad():
        dense.bias[:10] = -100.0  # GELU(-100 + ...) = 0 with σ' = 0: half the units dead
    trainer.train()
    first, second = (w.report.row(SITES[0])["dead_pct"] for w in callback.history)
    assert first == 50.0 and second < 5.0
    assert callback.recycler is not None and callback.recycler.recycled >= 10
    assert callback.recycler.to_frame()["site"].tolist()[0] == SITES[0]
