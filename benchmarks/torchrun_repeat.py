#!/usr/bin/env python
"""Run the 2-process CPU scan under torchrun N times and count clean exits (issue 13).

    python benchmarks/torchrun_repeat.py            # 20 runs
    python benchmarks/torchrun_repeat.py --runs 5 --keep-going

Each run: ``torchrun --nproc-per-node 2 -m neurodiag scan`` of a small MLP on 37 samples with
batch 8 (5 batches: uneven across the ranks), gloo backend, a free port per run. Prints one line
per run (exit code, seconds, the last stderr line when it failed) and the N/N total; exits 1 if
any run failed.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODEL = """
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(),
                         nn.Linear(16, 3))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep-going", action="store_true", help="do not stop at a failure")
    parser.add_argument("--log", help="write the stderr of a failed run to this file")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "mlp.py"
        model.write_text(MODEL)
        data = Path(tmp) / "data.pt"
        generator = torch.Generator().manual_seed(0)
        torch.save(
            {"x": torch.randn(37, 4, generator=generator), "y": torch.randint(0, 3, (37,))}, data
        )
        ok = 0
        for run in range(1, args.runs + 1):
            command = [
                sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                "-m", "neurodiag", "scan", str(model), "--data", str(data),
                "--batch-size", "8", "--no-progress", "-f", "csv",
            ]  # fmt: skip
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=300)
            seconds = time.perf_counter() - started
            tail = (done.stderr.strip().splitlines() or [""])[-1]
            healthy = done.returncode == 0 and done.stdout.count("\n") == 3  # header + 2 sites
            ok += healthy
            print(
                f"run {run:2d}: exit {done.returncode} {seconds:5.1f} s {'' if healthy else tail}"
            )
            if not healthy and args.log:
                Path(args.log).write_text(done.stderr)
            if not healthy and not args.keep_going:
                break
        print(f"{ok}/{run} runs exited 0 with the full report")
        return 0 if ok == run == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
