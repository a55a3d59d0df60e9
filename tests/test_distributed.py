"""A 2-process gloo scan (and a Monitor around DDP) equals a 1-process scan of the same data."""

from __future__ import annotations

import gc
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
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
