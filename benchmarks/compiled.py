#!/usr/bin/env python
"""Compiled training with and without ``neurodiag.Monitor`` (issue 25), side by side.

A script, not a test. Run from the repository root::

    python benchmarks/compiled.py                    # models a, b, c; 7 repeats
    python benchmarks/compiled.py --models a --repeats 11 --threads 1 --json

Per model of ``benchmarks/overhead.py`` ((a) 50-layer ReLU MLP, (b) conv+BN+ReLU CNN, (c) a
transformer block whose GELU is an ``F.gelu`` call), the training loop of its train rows
(zero_grad, forward, cross-entropy, backward, SGD step; train mode) in four variants, on two
copies of the model with the same weights and the same batches:

* ``eager``            -- the loop on the eager model (for scale: what compiling earns);
* ``compiled``         -- the loop on ``torch.compile(model)``: the baseline;
* ``compiled+monitor`` -- the loop on ``torch.compile(copy)`` with one ``Monitor(every=100)``
  open for the whole benchmark, measuring every step: inside the compiled graph when every site
  is an activation module ((a), (b)), else eagerly under ``force_eager`` ((c): F.gelu is only
  seen through the function mode); the report header says which;
* ``eager+monitor``    -- the eager loop with a Monitor (overhead.py's ``RunningMonitor``), the
  figure of overhead.py's train rows.

Compilation (Inductor, default options) happens in the untimed warm-up passes. Variants are
interleaved (order reversed every other repetition); the table shows medians per pass, the
min-max spread, ratios of the medians, paired per-repetition ratios and process CPU time.
Target: compiled+monitor / compiled <= 1.15 on (a)-(c).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead

import neurodiag

TARGET = 1.15
VARIANTS = ("eager", "compiled", "compiled+monitor", "eager+monitor")


def bench(case: overhead.Case, batches_n: int, repeats: int) -> dict[str, Any]:
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = case.build().train()
    twin = copy.deepcopy(model)  # the monitored copy: its compiled code carries the hooks
    batches = overhead.make_batches(case, batches_n, device, torch.Generator().manual_seed(0))
    compiled: Any = torch.compile(model)
    compiled_twin: Any = torch.compile(twin)
    optimizers = {
        "eager": overhead.make_optimizer(model),
        "compiled": overhead.make_optimizer(model),
        "compiled+monitor": overhead.make_optimizer(twin),
        "eager+monitor": overhead.make_optimizer(model),
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = neurodiag.Monitor(compiled_twin, every=overhead.TRAIN_EVERY).__enter__()
        runs = {
            "eager": lambda: overhead.train_pass(model, batches, optimizers["eager"]),
            "compiled": lambda: overhead.train_pass(compiled, batches, optimizers["compiled"]),
            "compiled+monitor": lambda: overhead.train_pass(
                compiled_twin, batches, optimizers["compiled+monitor"]
            ),
            "eager+monitor": overhead.RunningMonitor(
                model, batches, optimizers["eager+monitor"], device
            ),
        }
        started = time.perf_counter()
        # warm-up, the monitored twin first: its discovery step holds force_eager for the whole
        # process, and entering the graph drops compiled code once (neurodiag.monitor.graph)
        for name in ("compiled+monitor", "compiled", "eager", "eager+monitor"):
            for _ in range(2):
                _pass(runs[name])
        warmup_s = time.perf_counter() - started
        cpu: dict[str, list[float]] = {}
        times = overhead.interleaved(runs, repeats, device, warmup=0, cpu_times=cpu)
        report = monitor.report()
        monitor.__exit__(None, None, None)
        runs["eager+monitor"].close()
    note = next((n for n in report.header.notes if n.startswith("torch.compile:")), "")
    return {
        "model": case.name,
        "batches": batches_n,
        "warmup_s": warmup_s,
        "sites": len(report.sites),
        "how": note,
        "warnings": sorted({str(w.message) for w in caught if "neurodiag" in str(w.message)}),
        "ms": {k: [1000 * t for t in v] for k, v in times.items()},
        "cpu_ms": {k: [1000 * t for t in v] for k, v in cpu.items()},
    }


def _pass(run: Any) -> None:
    getattr(run, "prepare", lambda: None)()
    run()
    getattr(run, "finish", lambda: None)()


def _ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(a) / statistics.median(b)


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        f"torch {torch.__version__} | python {platform.python_version()} | "
        f"threads {torch.get_num_threads()} | {platform.processor() or platform.machine()}",
        "",
        f"{'model':42s} {'eager':>8s} {'compiled':>9s} {'+monitor':>9s}  "
        f"{'+monitor/compiled':>18s} {'paired [min-max]':>18s} {'cpu':>6s} "
        f"{'eager+mon/eager':>16s}",
    ]
    for r in results:
        ms, cpu = r["ms"], r["cpu_ms"]
        ratio = _ratio(ms["compiled+monitor"], ms["compiled"])
        paired = [a / b for a, b in zip(ms["compiled+monitor"], ms["compiled"], strict=True)]
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        lines.append(
            f"{r['model']:42s} {statistics.median(ms['eager']):8.1f} "
            f"{statistics.median(ms['compiled']):9.1f} "
            f"{statistics.median(ms['compiled+monitor']):9.1f}  "
            f"{ratio:6.2f}x {verdict}<={TARGET:.2f} "
            f"{statistics.median(paired):5.2f} [{min(paired):.2f}-{max(paired):.2f}] "
            f"{_ratio(cpu['compiled+monitor'], cpu['compiled']):5.2f}x "
            f"{_ratio(ms['eager+monitor'], ms['eager']):15.2f}x"
        )
    lines.append("")
    lines.append("ms per pass, medians; spread (min-max ms) and how each Monitor measured:")
    for r in results:
        spread = ", ".join(
            f"{k} {min(v):.1f}-{max(v):.1f}" for k, v in r["ms"].items() if k in VARIANTS
        )
        lines.append(f"  {r['model']}: {spread}; warm-up {r['warmup_s']:.0f} s")
        lines.append(f"    {r['sites']} sites; {r['how']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="a,b,c")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for key in args.models.split(","):
        case = overhead.CASES[key.strip()]
        print(f"[{time.strftime('%H:%M:%S')}] ({case.key}) {case.name} ...", file=sys.stderr)
        results.append(bench(case, args.batches or case.default_batches, args.repeats))
    print(json.dumps(results, indent=1) if args.json else render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
