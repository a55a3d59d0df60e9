"""A 2-process gloo scan (and a Monitor around DDP or FSDP2) equals a 1-process scan of the same
data."""

from __future__ import annotations

import gc
import os
import socket
import tempfile

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

import neurodiag
from tests.fixtures.models import ZOO, make_batches

WORLD = 2


def _worker(rank: int, init_file: str, result_file: str, n_batches: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = ZOO["functional"]().double()
        batches = make_batches("functional", model, n_batches=n_batches)
        report = neurodiag.scan(model, batches)
        if rank == 0:
            torch.save(
                {"frame": report.to_frame().to_dict("list"), "batches": report.header.batches},
                result_file,
            )
        torch.manual_seed(0)
        model_m = DistributedDataParallel(ZOO["functional"]().double().eval())
        # join(): DDP's documented way to train on uneven inputs (rank 1 may see fewer batches)
        with neurodiag.Monitor(model_m) as monitor, model_m.join():
            for i, (x, y) in enumerate(batches):
                if i % WORLD == rank:
                    torch.nn.functional.cross_entropy(model_m(x), y).backward()
        monitored = monitor.report()
        if rank == 0:
            torch.save({"frame": monitored.to_frame().to_dict("list")}, result_file + ".monitor")
        # Tear down in order: every rank past its last collective, DDP's reducer (which holds
        # the process group and its threads) gone, then the group. Destroying the group under a
        # live DDP model aborted a rank now and then ("terminate called without an active
        # exception", SIGABRT) after all the results were written.
        dist.barrier()
        del model_m, monitor
        gc.collect()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("n_batches", [5, 1])  # 1 batch: rank 1 sees no data at all
def test_two_process_scan_equals_single_process(n_batches: int) -> None:
    torch.manual_seed(0)
    model = ZOO["functional"]().double()
    batches = make_batches("functional", model, n_batches=n_batches)
    expected = neurodiag.scan(model, batches).to_frame()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        result_file = os.path.join(tmp, "result.pt")
        mp.start_processes(
            _worker, args=(init_file, result_file, n_batches), nprocs=WORLD, start_method="spawn"
        )
        got = torch.load(result_file, weights_only=False)
        monitored = torch.load(result_file + ".monitor", weights_only=False)
    assert got["batches"] == n_batches
    for frame in (got["frame"], monitored["frame"]):
        assert frame["site"] == list(expected["site"])
        for column in ("neurons", "dead_pct", "dormant_pct", "grad_dormant_pct", "nonfinite"):
            assert frame[column] == list(expected[column]), column
        assert frame["min_abs_deriv"] == pytest.approx(list(expected["min_abs_deriv"]), rel=1e-12)
        assert frame["mag"] == pytest.approx(list(expected["mag"]), rel=1e-9)


FSDP_MODEL = "smooth"  # 16 activation kinds, each behind its own Linear: one FSDP unit per layer
FSDP_BATCHES = 4  # even: FSDP2 all-gathers in every forward/backward, so ranks need equal counts


def _fsdp_worker(rank: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = ZOO[FSDP_MODEL]().double()
        batches = make_batches(FSDP_MODEL, model, n_batches=FSDP_BATCHES)
        for module in model.modules():
            if isinstance(module, nn.Linear):
                fully_shard(module)
        fully_shard(model)  # the root: its parameters (none left) and the lazy-init entry point
        assert all(isinstance(p, DTensor) for p in model.parameters())  # really sharded
        # every=1: window k holds step k of each rank, i.e. batches 2k and 2k+1 once reduced
        with neurodiag.Monitor(model, every=1) as monitor:
            for i, (x, y) in enumerate(batches):
                if i % WORLD == rank:
                    torch.nn.functional.cross_entropy(model(x), y).backward()
        monitored = monitor.report()
        if rank == 0:
            windows = [w.report.to_frame().to_dict("list") for w in monitor.history]
            torch.save(
                {
                    "frame": monitored.to_frame().to_dict("list"),
                    "header": monitored.header,
                    "windows": windows,
                    "window_batches": [(w.batches, w.samples) for w in monitor.history],
                },
                result_file,
            )
        # the same teardown as the DDP worker: every rank past its last collective, the sharded
        # model (its DTensors hold the device mesh and so the group) gone, then the group
        dist.barrier()
        del model, monitor
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_monitor_around_fsdp2_equals_single_process_scan() -> None:
    """FSDP2 (``fully_shard``) on CPU/gloo in float64: each rank trains on its half of the
    batches, ``Monitor.report()`` reduces them, and the result is the 1-process scan's."""
    torch.manual_seed(0)
    model = ZOO[FSDP_MODEL]().double()
    batches = make_batches(FSDP_MODEL, model, n_batches=FSDP_BATCHES)
    expected = neurodiag.scan(model, batches).to_frame()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        result_file = os.path.join(tmp, "result.pt")
        mp.start_processes(
            _fsdp_worker, args=(init_file, result_file), nprocs=WORLD, start_method="spawn"
        )
        got = torch.load(result_file, weights_only=False)
    header, frame = got["header"], got["frame"]
    # the user's class, not fully_shard's dynamic FSDPSmoothZoo; DTensor params read as such
    assert (header.model, header.device, header.dtype) == ("SmoothZoo", "cpu", "float64")
    assert header.batches == FSDP_BATCHES  # summed over the ranks, like a distributed scan
    _assert_same_statistics(frame, expected)
    # each window reduced across the ranks: window k = a scan of batches 2k and 2k+1
    size = len(batches[0][0])
    assert got["window_batches"] == [(WORLD, WORLD * size)] * (FSDP_BATCHES // WORLD)
    for k, window in enumerate(got["windows"]):
        _assert_same_statistics(
            window, neurodiag.scan(model, batches[2 * k : 2 * k + 2]).to_frame()
        )


def _assert_same_statistics(frame: dict[str, list[object]], expected: pd.DataFrame) -> None:
    assert frame["site"] == list(expected["site"])
    for column in ("neurons", "dead_pct", "dormant_pct", "grad_dormant_pct", "nonfinite"):
        assert frame[column] == list(expected[column]), column
    # min is order-free, so exact up to the same float64 derivatives; the mean magnitude sums the
    # ranks' partial sums in another order than one process does (last-ulp differences)
    assert frame["min_abs_deriv"] == pytest.approx(list(expected["min_abs_deriv"]), rel=1e-12)
    assert frame["mag"] == pytest.approx(list(expected["mag"]), rel=1e-9)


def _lightning_ddp_worker(rank: int, port: int, result_file: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    from lightning.pytorch import Trainer

    from neurodiag.integrations.lightning import NeurodiagCallback
    from tests.test_lightning import Net, _loader

    torch.manual_seed(0)
    module = Net(die_at=1)
    callback = NeurodiagCallback()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=WORLD,
        strategy="ddp_find_unused_parameters_true",  # Net.head is for manual optimisation
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    trainer.fit(module, _loader())
    if rank == 0:
        torch.save({"frame": callback.to_frame().to_dict("list")}, result_file)
    trainer.strategy.barrier()
    if dist.is_initialized():
        dist.destroy_process_group()


def test_lightning_ddp_windows_are_reduced_across_ranks() -> None:
    """2-process Lightning DDP (gloo): each rank trains on half of every epoch's samples; the
    per-epoch window holds both halves (sample counts summed) and equals a 1-process scan of the
    epoch's data (lr 0, so the weights do not move)."""
    pytest.importorskip("lightning.pytorch")
    from tests.test_lightning import BATCH, BATCHES_PER_EPOCH, Net, _loader

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.pt")
        mp.start_processes(
            _lightning_ddp_worker, args=(port, result_file), nprocs=WORLD, start_method="spawn"
        )
        frame = torch.load(result_file, weights_only=False)["frame"]
    assert frame["epoch"] == [0, 1]
    assert frame["samples"] == [BATCHES_PER_EPOCH * BATCH] * 2  # 16 per rank, summed
    assert frame["batches"] == [BATCHES_PER_EPOCH] * 2  # 2 per rank, summed
    torch.manual_seed(0)
    module = Net(die_at=1)
    batches = list(_loader())
    for epoch in (0, 1):
        if epoch == 1:
            with torch.no_grad():
                module.net[0].bias[:4] = -100.0
        expected = neurodiag.scan(module.net, batches).to_frame()
        assert frame["dead_pct"][epoch] == expected["dead_pct"][0]
        assert frame["dormant_pct"][epoch] == expected["dormant_pct"][0]
        assert frame["mag"][epoch] == pytest.approx(expected["mag"][0], rel=1e-6)
