#!/usr/bin/env python
"""neurodiag side by side with its peers (issue 30): cost of per-layer statistics vs a plain step.

A script, not a test. Run from the repository root (peers installed: see benchmarks/README.md)::

    python benchmarks/peers.py                                  # all workloads, 5 repeats, 1 thread
    python benchmarks/peers.py --json docs/performance/peers.json
    python benchmarks/peers.py --docs-only          # table in docs/performance.md from JSON
    python benchmarks/peers.py --workloads digits --tools neurodiag.scan --depth 50 --inputs randn

Workloads: ``digits`` (He-initialised 20 x (Linear(100) + ReLU) MLP on scikit-learn digits, 64 in,
10 out, standardised, batches of 256 cycled to 10), ``cnn`` (``SmallCNN`` of overhead.py, batch 64
of 3 x 32 x 32 random normal inputs) and ``bert`` (``BertForSequenceClassification``, hidden 64,
2 layers, 2 heads, intermediate 128, vocab 100, seq 32, batch 16; built from its config, no
download).

Variants, each on its own copy of the same initial weights and the same pre-built batches, in one
process, interleaved (the order reversed every other repeat), after one warm-up pass of each:

* ``plain``: per batch forward, cross-entropy, ``backward()``, ``zero_grad(set_to_none=True)``;
  the baseline of every row but ``neurodiag.Monitor``.
* ``neurodiag.scan``: ``neurodiag.scan(model, batches)`` (its defaults: every statistic but the
  opt-in representation rank; hooks attached and removed, report built, per call).
* ``train`` / ``neurodiag.Monitor``: the plain loop plus ``SGD.step()`` (lr 1e-3), without and
  with one ``neurodiag.Monitor`` open across the whole run (paused between passes; its window
  flush, once per pass, is outside the timer: amortised over ``every=100`` steps it is small).
* ``torch-audit``: ``torch_audit.Auditor`` (runtime validators, audited every step) driving the
  forward and backward.
* ``TorchLens``: ``torchlens.trace(..., save_grads=True)`` then ``log_backward(loss)`` per batch.
* ``BackPACK``: ``extend(model)``, ``extend(CrossEntropyLoss())``, ``backward()`` under
  ``backpack(BatchL2Grad())``.
* ``Cockpit``: ``Cockpit(params, quantities=[GradNorm])`` tracking every step.

A ratio is the variant's time over its baseline's time in the same repeat (paired); the table
shows the median and min-max over the repeats, in wall-clock and in process CPU time (steadier on
a busy machine). Peak memory is not measured (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import importlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "performance.md"
JSON_DEFAULT = ROOT / "docs" / "performance" / "peers.json"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"

#: tool -> (distribution to check, what it measures)
TOOLS: dict[str, tuple[str | None, str]] = {
    "plain": (None, "nothing (baseline)"),
    "neurodiag.scan": (
        None,
        "per neuron and per site, all batches: dead/inactive %, mean, mean abs dL/da, NaN/Inf",
    ),
    "train": (None, "nothing (baseline of the Monitor row: plain + SGD step)"),
    "neurodiag.Monitor": (
        None,
        "per neuron and per site, every step of a real training loop (same as scan)",
    ),
    "torch-audit": (
        "torch-audit",
        "per layer, per step: activation sparsity (one .item() per layer) + lint rules",
    ),
    "TorchLens": (
        "torchlens",
        "every op's activation and gradient saved, one batch at a time (no statistics)",
    ),
    "BackPACK": ("backpack-for-pytorch", "per parameter: per-sample gradient L2 norms"),
    "Cockpit": ("cockpit-for-pytorch", "whole model: gradient norm (GradNorm quantity only)"),
}
ORDER = list(TOOLS)
BASELINE = {name: ("train" if name == "neurodiag.Monitor" else "plain") for name in TOOLS}
BASELINE["plain"] = BASELINE["train"] = ""


# --------------------------------------------------------------------------------------------
# workloads


def _digits(depth: int, batches: int, inputs: str, batch: int = 256) -> tuple[Any, list[Any]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from overhead import digits_batches, digits_mlp

    return digits_mlp(depth), digits_batches(batches, inputs, batch)


def _cnn(batches: int) -> tuple[Any, list[Any]]:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from overhead import SmallCNN

    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(batches)
    ]
    return SmallCNN(), data


def _bert(batches: int) -> tuple[Any, list[Any]]:
    import torch
    from torch import nn
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=10,
    )

    class BertLogits(nn.Module):
        """The classifier's logits from token ids: a model(x) -> logits for every tool."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = BertForSequenceClassification(cfg)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids).logits  # type: ignore[no-any-return]

    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randint(0, 100, (16, 32), generator=g), torch.randint(0, 10, (16,), generator=g))
        for _ in range(batches)
    ]
    return BertLogits(), data


WORKLOAD_DESC = {
    "digits": "He-init {depth} x (Linear(100)+ReLU) MLP, {inputs} inputs, {batches} x 256",
    "cnn": "SmallCNN (4 x Conv+BatchNorm+ReLU(inplace)), {batches} x 64 x 3 x 32 x 32",
    "bert": "BertForSequenceClassification h64 L2 heads2 ff128, {batches} x 16 x 32 tokens",
}


# --------------------------------------------------------------------------------------------
# variants: each returns (prepare, run, after) callables around one timed pass


def _pkg_resources_shim() -> None:
    """Cockpit 1.0.2 imports ``pkg_resources`` (gone from setuptools >= 81) for its version."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        mod = types.ModuleType("pkg_resources")

        class DistributionNotFound(Exception):
            pass

        def get_distribution(name: str) -> Any:
            try:
                return types.SimpleNamespace(version=importlib.metadata.version(name))
            except importlib.metadata.PackageNotFoundError as exc:
                raise DistributionNotFound(name) from exc

        mod.DistributionNotFound = DistributionNotFound  # type: ignore[attr-defined]
        mod.get_distribution = get_distribution  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = mod


Pass = Callable[[], None]
#: ``--scan-mode``: None keeps scan's default (eval)
SCAN_MODE: str | None = None


def _make_variant(name: str, model: Any, data: list[Any]) -> tuple[Pass, Pass, Pass]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    noop: Pass = lambda: None  # noqa: E731
    model.train()

    def plain() -> None:
        for x, y in data:
            F.cross_entropy(model(x), y).backward()
            model.zero_grad(set_to_none=True)

    if name == "plain":
        return noop, plain, noop
    if name == "neurodiag.scan":
        import neurodiag

        def scan() -> None:
            neurodiag.scan(model, data, **({"mode": SCAN_MODE} if SCAN_MODE else {}))

        return noop, scan, noop
    if name in ("train", "neurodiag.Monitor"):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def train() -> None:
            for x, y in data:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
            opt.zero_grad(set_to_none=True)

        if name == "train":
            return noop, train, noop
        import neurodiag

        mon = neurodiag.Monitor(model).__enter__()
        mon.pause()

        def after() -> None:
            mon.end_window()
            mon.pause()

        return mon.resume, train, after
    if name == "torch-audit":
        from torch_audit import Auditor

        def audited() -> None:
            auditor = Auditor(model, every_n_steps=1)
            with auditor:
                for x, y in data:
                    out = auditor.forward(x)
                    auditor.backward(F.cross_entropy(out, y))
                    model.zero_grad(set_to_none=True)
            auditor.finish()

        return noop, audited, noop
    if name == "TorchLens":
        import torchlens as tl

        opts = tl.options.CaptureOptions(save_grads=True)

        def lens() -> None:
            for x, y in data:
                log = tl.trace(model, x, capture=opts)
                out = log[log.output_layers[0]].out
                log.log_backward(F.cross_entropy(out, y))
                model.zero_grad(set_to_none=True)
                del log

        return noop, lens, noop
    if name == "BackPACK":
        from backpack import backpack, extend
        from backpack.extensions import BatchL2Grad

        bmodel = extend(model)
        lossfn = extend(nn.CrossEntropyLoss())

        def bp() -> None:
            for x, y in data:
                loss = lossfn(bmodel(x), y)
                with backpack(BatchL2Grad()):
                    loss.backward()
                bmodel.zero_grad(set_to_none=True)

        return noop, bp, noop
    if name == "Cockpit":
        _pkg_resources_shim()
        from backpack import extend
        from cockpit import Cockpit, quantities
        from cockpit.utils import schedules

        cmodel = extend(model)
        lossfn = extend(nn.CrossEntropyLoss())
        ind = nn.CrossEntropyLoss(reduction="none")
        opt = torch.optim.SGD(cmodel.parameters(), lr=1e-3)
        cp = Cockpit(
            list(cmodel.parameters()),
            quantities=[quantities.GradNorm(track_schedule=schedules.linear(1))],
        )
        step = [0]

        def cock() -> None:
            for x, y in data:
                out = cmodel(x)
                loss = lossfn(out, y)
                info = {
                    "batch_size": len(x),
                    "individual_losses": ind(out, y),
                    "loss": loss,
                    "optimizer": opt,
                }
                with cp(step[0], info=info):
                    loss.backward(create_graph=cp.create_graph(step[0]))
                cmodel.zero_grad(set_to_none=True)
                step[0] += 1

        return noop, cock, noop
    raise ValueError(name)


def _installed(name: str) -> str | None:
    dist = TOOLS[name][0]
    if dist is None:
        return None
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    module = {"torch-audit": "torch_audit", "TorchLens": "torchlens"}.get(name, name.lower())
    if name == "Cockpit":
        _pkg_resources_shim()
    try:
        importlib.import_module(module)
    except Exception as exc:
        return f"not installed ({dist} {version} fails to import: {_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_workload(
    key: str, tools: list[str], repeats: int, batches: int, depth: int, inputs: str
) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    if key == "digits":
        model, data = _digits(depth, batches, inputs)
    elif key == "cnn":
        model, data = _cnn(batches)
    else:
        model, data = _bert(batches)
    desc = WORKLOAD_DESC[key].format(depth=depth, inputs=inputs, batches=batches)
    wanted = [t for t in ORDER if t in tools or t in {BASELINE[u] for u in tools if u in TOOLS}]
    rows: dict[str, dict[str, Any]] = {}
    live: dict[str, tuple[Pass, Pass, Pass]] = {}
    for name in wanted:
        row: dict[str, Any] = {"tool": name, "measures": TOOLS[name][1], "baseline": BASELINE[name]}
        rows[name] = row
        missing = _installed(name)
        if missing:
            row["status"] = missing
            continue
        try:
            variant = _make_variant(name, copy.deepcopy(model), data)
            prepare, run, after = variant
            prepare()
            run()  # warm-up, and the check that the tool runs on this model at all
            after()
        except Exception as exc:
            row["status"] = "fails: " + _first_line(exc)
            continue
        row.update(status="ok", wall_s=[], cpu_s=[])
        live[name] = variant
    order = list(live)
    for rep in range(repeats):
        for name in order if rep % 2 == 0 else order[::-1]:
            prepare, run, after = live[name]
            prepare()
            w0, c0 = time.perf_counter(), time.process_time()
            run()
            w1, c1 = time.perf_counter(), time.process_time()
            after()
            rows[name]["wall_s"].append(w1 - w0)
            rows[name]["cpu_s"].append(c1 - c0)
        print(f"  {key}: repeat {rep + 1}/{repeats}", file=sys.stderr)
    for row in rows.values():
        base = rows.get(row["baseline"]) if row["baseline"] else None
        if row["status"] != "ok":
            continue
        row["ms_per_pass"] = 1e3 * statistics.median(row["wall_s"])
        if base is not None and base.get("status") == "ok":
            for kind in ("wall", "cpu"):
                r = [a / b for a, b in zip(row[f"{kind}_s"], base[f"{kind}_s"])]
                row[f"{kind}_ratio"] = _spread(r)
    return {"workload": key, "description": desc, "rows": [rows[n] for n in wanted]}


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "date": _dt.date.today().isoformat(),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = round(os.getloadavg()[0], 2)
    for tool, (dist, _) in TOOLS.items():
        if dist:
            try:
                info.setdefault("versions", {})[tool] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                info.setdefault("versions", {})[tool] = None
    return info


# --------------------------------------------------------------------------------------------
# rendering (no torch, no peers: tests/test_peers_docs.py imports this module)


def _fmt(s: dict[str, float] | None) -> str:
    if not s:
        return "–"
    return f"{s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f})"


def render_table(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v)
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}, "
        f"{m['threads']} thread(s), {m['date']}; load average {m.get('loadavg_start', '?')} at "
        f"start, {m.get('loadavg_end', '?')} at the end. Peers: {versions or 'none'}. "
        f"{s['repeats']} interleaved repeats; ratios are median (min–max) of paired ratios.",
        "",
        "| workload | tool | what it measures | CPU time × | wall-clock × | ms/pass |",
        "|---|---|---|---|---|---|",
    ]
    for w in result["workloads"]:
        for r in w["rows"]:
            if r["tool"] in ("plain", "train"):
                base = f"{r['ms_per_pass']:.0f}" if r.get("status") == "ok" else "–"
                lines.append(
                    f"| {w['workload']} | {r['tool']} | {r['measures']} | 1 | 1 | {base} |"
                )
                continue
            vs = f" (vs {r['baseline']})" if r["baseline"] == "train" else ""
            if r.get("status") != "ok":
                lines.append(
                    f"| {w['workload']} | {r['tool']} | {r['measures']} | {r['status']} | | |"
                )
                continue
            lines.append(
                f"| {w['workload']} | {r['tool']}{vs} | {r['measures']} | "
                f"{_fmt(r.get('cpu_ratio'))} | {_fmt(r.get('wall_ratio'))} | "
                f"{r['ms_per_pass']:.0f} |"
            )
    lines.append("")
    lines.append(
        "Workloads: "
        + "; ".join(f"{w['workload']}: {w['description']}" for w in result["workloads"])
        + "."
    )
    return "\n".join(lines)


def replace_block(doc: str, table: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"markers {BEGIN} / {END} not found in {DOCS}")
    return pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", doc, count=1)


def extract_block(doc: str) -> str:
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[start:end].strip("\n")


def _atomic_write(path: Path, text: str) -> None:
    sys.path.insert(0, str(ROOT))
    from neurodiag.atomic import write_text

    write_text(path, text)


def write_docs(result: dict[str, Any]) -> None:
    _atomic_write(DOCS, replace_block(DOCS.read_text(encoding="utf-8"), render_table(result)))


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(result["workloads"]), figsize=(4.5 * len(result["workloads"]), 3.6)
    )
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, w in zip(axes, result["workloads"]):
        rows = [r for r in w["rows"] if r.get("cpu_ratio")]
        names = [r["tool"] for r in rows]
        med = [r["cpu_ratio"]["median"] for r in rows]
        lo = [r["cpu_ratio"]["median"] - r["cpu_ratio"]["min"] for r in rows]
        hi = [r["cpu_ratio"]["max"] - r["cpu_ratio"]["median"] for r in rows]
        ax.barh(names, med, xerr=[lo, hi], color="tab:blue")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(w["workload"])
        ax.set_xlabel("CPU time / baseline")
        ax.invert_yaxis()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    sys.path.insert(0, str(ROOT))
    from neurodiag.atomic import write_bytes

    write_bytes(out, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workloads", default="digits,cnn,bert")
    p.add_argument("--tools", default="all", help="comma-separated tool names, or all")
    p.add_argument("--batches", type=int, default=0, help="default: 10 digits, 4 cnn/bert")
    p.add_argument("--depth", type=int, default=20, help="digits MLP depth")
    p.add_argument("--inputs", choices=("digits", "randn"), default="digits")
    p.add_argument("--scan-mode", choices=("train", "eval"), help="default: scan's (eval)")
    p.add_argument("--json", type=Path, help="write the results here (atomically)")
    p.add_argument("--docs-only", action="store_true", help="rewrite the docs table from --json")
    p.add_argument("--plot", type=Path, help="with --docs-only or a run: write a PNG of ratios")
    a = p.parse_args(argv)
    if a.docs_only:
        result = json.loads((a.json or JSON_DEFAULT).read_text(encoding="utf-8"))
        write_docs(result)
        if a.plot:
            plot(result, a.plot)
        print(render_table(result))
        return 0

    import warnings

    import torch

    global SCAN_MODE
    SCAN_MODE = a.scan_mode
    warnings.filterwarnings("ignore")  # the peers' UserWarnings, once per batch
    torch.set_num_threads(a.threads)
    tools = ORDER if a.tools == "all" else [t.strip() for t in a.tools.split(",")]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        p.error(f"unknown tools {sorted(unknown)}; choose from {ORDER}")
    result: dict[str, Any] = {
        "machine": machine_info(a.threads),
        "settings": {
            "repeats": a.repeats,
            "depth": a.depth,
            "inputs": a.inputs,
            "scan_mode": a.scan_mode or "eval (default)",
            "argv": sys.argv[1:] if argv is None else argv,
        },
        "workloads": [],
    }
    for key in a.workloads.split(","):
        n = a.batches or (10 if key == "digits" else 4)
        result["workloads"].append(run_workload(key, tools, a.repeats, n, a.depth, a.inputs))
    if hasattr(os, "getloadavg"):
        result["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    print(render_table(result))
    if a.json:
        _atomic_write(a.json, json.dumps(result, indent=1) + "\n")
    if a.plot:
        plot(result, a.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
