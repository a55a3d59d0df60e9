#!/usr/bin/env python
"""Where a training-loop Monitor's cost goes on model (a): bare hooks, bare C folds, the Monitor.

A script, not a test. Run from the repository root::

    python benchmarks/hook_floor.py                 # 30 interleaved repeats, 1 thread
    python benchmarks/hook_floor.py --repeats 60

Issue 25 asks for a Monitor measuring every step at <= 1.10x the training step on (a), 50 x
(Linear(100) + ReLU) at batch 256. This script puts the Monitor beside what any per-site design
must pay at least, in one process, on the same model, batches and SGD loop as
``overhead.py``'s train rows (interleaved, CPU-time medians, paired ratios):

* ``train``         -- the loop alone (the baseline);
* ``bare hooks``    -- per ReLU a forward hook that registers a pre-hook on the output's
  autograd node, both doing nothing: the Python hooks any per-site measurement needs;
* ``bare C folds``  -- the same hooks, each making the one C call neurodiag's fast path makes
  (``nd_fold`` on z in the forward, on ∂L/∂a in the backward) with the arguments precomputed: the
  hooks plus the measuring, with no neurodiag Python around them;
* ``Monitor``       -- ``neurodiag.Monitor`` open all along, its window flushed outside the timer.

The gap between ``bare C folds`` and ``Monitor`` is neurodiag's own Python per site call; the
gap between ``bare hooks`` and ``bare C folds`` is what the per-call C work costs inside a
training step (more than the same calls measured alone: the step's GEMMs and the Python around
them evict each other's caches).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead

import neurodiag
from neurodiag.stats import native_fold

Hook = Callable[[nn.Module, Any, Any], None]


def bare_hook(_module: nn.Module, _args: Any, output: Tensor) -> None:
    output.grad_fn.register_prehook(lambda grads: None)


def c_fold_hooks(relus: list[nn.Module], batch: int, width: int) -> list[Hook]:
    """One hook per ReLU: ``nd_fold`` of z in the forward, of ∂L/∂a in the backward."""
    lib = native_fold.kernels()
    if lib is None:
        raise SystemExit(f"the C folds are not available: {native_fold.status()}")
    acc = torch.empty(1, lib.rows, width, dtype=torch.float64)
    hooks = []
    for _ in relus:
        sums, active, high, grads = (
            torch.zeros(width),
            torch.zeros(width, dtype=torch.float64),
            torch.zeros(width),
            torch.zeros(width),
        )

        def grad_hook(g: Any, grads: Tensor = grads) -> None:
            lib.fold(
                g[0].data_ptr(), batch, width, 1, 2, acc.data_ptr(), grads.data_ptr(), None, None
            )

        def hook(
            _module: nn.Module,
            args: Any,
            output: Tensor,
            sums: Tensor = sums,
            active: Tensor = active,
            high: Tensor = high,
            grad_hook: Callable[[Any], None] = grad_hook,
        ) -> None:
            lib.fold(args[0].data_ptr(), batch, width, 1, 3, acc.data_ptr(), sums.data_ptr(),
                     active.data_ptr(), high.data_ptr())  # fmt: skip
            output.grad_fn.register_prehook(grad_hook)

        hooks.append(hook)
    return hooks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    case = overhead.CASES["a"]
    model = case.build()
    batches = overhead.make_batches(case, 8, torch.device("cpu"), torch.Generator().manual_seed(0))
    optimizer = overhead.make_optimizer(model)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    batch = case.input_shape[0]
    width = next(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    folds = c_fold_hooks(relus, batch, width)
    monitor = neurodiag.Monitor(model).__enter__()
    overhead.train_pass(model, batches, optimizer)  # discovery, outside the timer
    monitor.end_window()
    monitor.pause()

    def run(variant: str) -> float:
        handles = []
        if variant == "bare hooks":
            handles = [m.register_forward_hook(bare_hook) for m in relus]
        elif variant == "bare C folds":
            handles = [m.register_forward_hook(h) for m, h in zip(relus, folds, strict=True)]
        elif variant == "Monitor":
            monitor.resume()
        start = time.process_time()
        overhead.train_pass(model, batches, optimizer)
        spent = time.process_time() - start
        for handle in handles:
            handle.remove()
        if variant == "Monitor":
            monitor.end_window()
            monitor.pause()
        return spent

    variants = ["train", "bare hooks", "bare C folds", "Monitor"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for variant in variants if rep % 2 == 0 else reversed(variants):
            times[variant].append(run(variant))
    monitor.__exit__(None, None, None)
    base = times["train"]
    print(f"(a) {case.name}: {len(relus)} ReLU sites, 8 steps a pass, {args.repeats} repeats, "
          f"{args.threads} thread(s), CPU time")  # fmt: skip
    print(f"{'variant':14s} {'ms/step':>8s} {'/train':>7s} {'paired [q1-q3]':>18s} {'us/site':>8s}")
    for variant in variants:
        ms = statistics.median(times[variant]) * 1e3 / len(batches)
        paired = [t / b for t, b in zip(times[variant], base, strict=True)]
        q1, _, q3 = statistics.quantiles(paired, n=4)
        base_ms = statistics.median(base) * 1e3 / len(batches)
        per_site_us = (ms - base_ms) * 1e3 / len(relus)
        spread = f"{statistics.median(paired):6.3f}x [{q1:.3f}-{q3:.3f}]"
        print(f"{variant:14s} {ms:8.2f} {ms / base_ms:6.3f}x {spread} {per_site_us:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
