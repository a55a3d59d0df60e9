"""The Lightning callback in real fits: steps from the training batches, whatever the module's
style; metrics through the module's logging into the logger's files; history after fit."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_scan_behaviour import _hook_counts

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402

from neurodiag.integrations.lightning import NeurodiagCallback  # noqa: E402

BATCHES_PER_EPOCH = 4
BATCH = 8


class Net(pl.LightningModule):  # type: ignore[misc,name-defined]
    """``training_step`` calls ``self.net(x)``, never ``self(x)``; from ``die_at`` on, half the
    hidden units get a bias of -100 at the start of each epoch (they die)."""

    def __init__(self, die_at: int | None = None, manual: bool = False, lr: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.head = nn.Linear(2, 2)
        self.die_at = die_at
        self.lr = lr
        self.automatic_optimization = not manual
        with torch.no_grad():
            self.net[0].bias.fill_(10.0)  # every unit fires until it is killed

    def on_train_epoch_start(self) -> None:
        if self.die_at is not None and self.current_epoch >= self.die_at:
            with torch.no_grad():
                self.net[0].bias[:4] = -100.0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> Any:
        x, y = batch
        if self.automatic_optimization:
            return F.cross_entropy(self.net(x), y)
        # manual optimisation, two optimisers, two forwards of the same batch: one step
        first, second = self.optimizers()
        for optimizer, head in ((first, False), (second, True)):
            out = self.net(x)
            loss = F.cross_entropy(self.head(out) if head else out, y)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return None

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
        self.net(batch[0])  # validation and the sanity check: never measured

    def configure_optimizers(self) -> Any:
        if self.automatic_optimization:
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return (
            torch.optim.SGD(self.net.parameters(), lr=self.lr),
            torch.optim.SGD(self.head.parameters(), lr=self.lr),
        )


def _loader() -> torch.utils.data.DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    n = BATCHES_PER_EPOCH * BATCH
    data = torch.utils.data.TensorDataset(
        torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=BATCH)


def _fit(module: Any, callback: NeurodiagCallback, **trainer_options: Any) -> Any:
    options: dict[str, Any] = {
        "max_epochs": 3,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "limit_val_batches": 2,
        "num_sanity_val_steps": 2,
        **trainer_options,
    }
    trainer = pl.Trainer(callbacks=[callback], **options)
    trainer.fit(module, _loader(), _loader())
    return trainer


def test_self_net_fit_logs_every_epoch_to_csv_and_shows_a_layer_dying(tmp_path: Path) -> None:
    module = Net(die_at=2)
    callback = NeurodiagCallback()
    before = _hook_counts(module)
    logger = CSVLogger(str(tmp_path), name="run")
    _fit(module, callback, logger=logger)
    assert _hook_counts(module) == before
    metrics = pd.read_csv(Path(logger.log_dir) / "metrics.csv")
    per_epoch = metrics.dropna(subset=["neurodiag/net.1/dead_pct"])
    assert per_epoch["epoch"].tolist() == [0, 1, 2]
    assert per_epoch["neurodiag/net.1/dead_pct"].tolist() == [0.0, 0.0, 50.0]
    assert per_epoch["neurodiag/max_dead_pct"].tolist() == [0.0, 0.0, 50.0]
    assert {"neurodiag/net.1/mag", "neurodiag/net.1/min_abs_deriv"} <= set(metrics.columns)
    # the history survives fit: one window per epoch of training batches only
    frame = callback.to_frame()
    assert frame[["window_kind", "epoch", "batches", "samples"]].values.tolist() == [
        ["epoch", epoch, BATCHES_PER_EPOCH, BATCHES_PER_EPOCH * BATCH] for epoch in range(3)
    ]
    assert frame["dead_pct"].tolist() == [0.0, 0.0, 50.0]
    assert callback.report is not None and callback.report.header.batches == 3 * BATCHES_PER_EPOCH
    assert callback.report.row("net.1")["dead_pct"] == 0.0  # cumulative: each unit fired once


def test_tensorboard_logger_receives_the_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="run")
    _fit(Net(die_at=1), NeurodiagCallback(per_site=False), logger=logger, max_epochs=2)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert [e.value for e in events.Scalars("neurodiag/max_dead_pct")] == [0.0, 50.0]
    assert not any("/net.1/" in tag for tag in events.Tags()["scalars"])  # per_site=False


def test_manual_optimisation_with_two_optimisers_counts_one_step_per_batch() -> None:
    callback = NeurodiagCallback()
    _fit(Net(manual=True), callback, max_epochs=1)
    assert callback.report is not None
    header = callback.report.header
    assert (header.batches, header.samples) == (BATCHES_PER_EPOCH, BATCHES_PER_EPOCH * BATCH)
    # two calls of the ReLU in one step are two sites, as two calls in one forward are in a scan
    assert callback.report.sites == ["net.1#0", "net.1#1"]


def test_gradient_accumulation_measures_every_batch() -> None:
    callback = NeurodiagCallback(every=3)
    _fit(Net(lr=0.1), callback, max_epochs=2, accumulate_grad_batches=2)
    assert callback.report is not None and callback.report.header.batches == 2 * BATCHES_PER_EPOCH
    # windows of 3 batches across the epoch boundary, the last one shorter
    assert [(w.step_start, w.step_end) for w in callback.history] == [(0, 3), (3, 6), (6, 8)]


def test_a_fit_that_measured_no_step_warns() -> None:
    callback = NeurodiagCallback()
    with pytest.warns(RuntimeWarning, match="ran no training batch"):
        _fit(Net(), callback, limit_train_batches=0)
    assert callback.report is None and callback.history == []


def test_an_alert_stops_the_fit_when_asked() -> None:
    callback = NeurodiagCallback(thresholds={"max_dead_pct": 30}, stop_on_alert=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(Net(die_at=1), callback, max_epochs=5)
    assert trainer.current_epoch == 2  # epoch 1 finished, then the fit stopped
    assert [(a.site, a.metric, a.epoch, a.value) for a in callback.alerts] == [
        ("net.1", "dead_pct", 1, 50.0)
    ]
    assert any("neurodiag alert at net.1 (epoch 1" in str(w.message) for w in caught)


def test_recycle_option_revives_units_killed_during_the_fit(tmp_path: Path) -> None:
    """recycle=True: the topology comes from the first training step (the module has no
    forward of its own, training_step calls self.net), and the units killed in epoch 1 are
    recycled when its window closes: fresh incoming rows, zeroed outgoing columns."""

    def fit(recycle: bool) -> tuple[NeurodiagCallback, Net]:
        torch.manual_seed(0)
        module = Net(die_at=1, lr=0.1)
        callback = NeurodiagCallback(per_site=False, recycle=recycle)
        trainer = pl.Trainer(
            max_epochs=2,
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(module, _loader())
        return callback, module

    plain, _ = fit(False)
    treated, module = fit(True)
    assert plain.recycler is None and treated.recycler is not None
    # epoch 1 killed half the units in on_train_epoch_start: its window says so in both fits
    assert plain.history[1].report.row("net.1")["dead_pct"] == 50.0
    assert treated.history[1].report.row("net.1")["dead_pct"] == 50.0
    # the Recycler treated them at the end of that window: fresh rows, zeroed columns
    assert treated.recycler.recycled >= 4
    assert bool((module.net[2].weight[:, :4] == 0).all())
    assert bool((module.net[0].bias[:4] > -100.0).all())


def test_a_regrama_recycler_leaves_no_hook_on_the_module_after_the_fit(tmp_path: Path) -> None:
    """regrama hooks the pre-activations during training; the callback removes them at the end
    (the user's module keeps no hook of ours)."""
    from neurodiag.treat import Recycler

    torch.manual_seed(0)
    module = Net(die_at=1, lr=0.1)
    before = _hook_counts(module)
    recycler = Recycler(method="regrama")
    callback = NeurodiagCallback(per_site=False, recycle=recycler)
    _fit(module, callback, max_epochs=2, default_root_dir=tmp_path)
    assert recycler.links is not None  # it did trace and hook the module
    assert _hook_counts(module) == before
