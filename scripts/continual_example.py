#!/usr/bin/env python
"""The continual-learning proof of docs/treat.md: which treatment keeps a network able to learn.

    python scripts/continual_example.py                # trains and measures (~5 min on 2 cores)
    python scripts/continual_example.py --readme-only  # docs/treat.md's tables from the JSON

Dohare et al.'s permuted MNIST (Nature, 2024) in small: scikit-learn's 8×8 digits, a fifth held
out, and a sequence of 30 tasks, each a fixed random permutation of the 64 pixels (the same
digits, in an order the network has not seen). One MLP (4 hidden layers of 100 ReLU units,
PyTorch's default init) is trained on each task in turn, 3 epochs of batches of 32, with Adam at
lr 1e-2 (the rate that kills ReLU units, as in scripts/recycling_example.py) and at 5e-3, with

- ``none``: no treatment;
- ``redo``: ``Recycler(method="redo", tau=0.1)`` at the end of every epoch (the ReDo paper's τ);
- ``regrama``: ``Recycler(method="regrama")`` (G ≤ 0.01) at the end of every epoch;
- ``cbp``: ``Recycler(method="cbp")`` after every optimiser step, ρ = 1e-3, maturity 20, η = 0.99:
  Dohare's ρ = 1e-4 and maturity 100 scaled to tasks ~25 times shorter, so that each task
  replaces ~13 % of each layer's units (ρ × 100 units × 135 steps); not tuned;
- ``reset``: the reference, a network drawn afresh (and a new optimiser) at each task: what
  full plasticity reaches in this budget.

Each seed (0 and 1) fixes the initial weights, the permutations and the batches, the same for
every method. At the end of each task, before that epoch's treatment: the held-out accuracy, the
training accuracy, and a ``neurodiag.scan`` (forward only) of the task's training data: dead %
and τ-dormant % (τ = 0.1) over all 400 hidden units, and the mean effective rank of the four
sites when ``ScanConfig`` has ``rank``. Saves ``docs/treat/continual.json`` and
``docs/treat/continual.png`` (atomically) and rewrites the block of docs/treat.md between
``<!-- continual:start -->`` and ``<!-- continual:end -->``; ``tests/test_continual_example.py``
checks that the page equals the saved run.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "treat.md"
SAVED = ROOT / "docs" / "treat" / "continual.json"
FIGURE = ROOT / "docs" / "treat" / "continual.png"
SETTINGS: dict[str, Any] = {
    "tasks": 30,
    "epochs_per_task": 3,
    "batch_size": 32,
    "lrs": [1e-2, 5e-3],
    "seeds": [0, 1],
    "hidden": [100, 100, 100, 100],
    "held_out": 0.2,
    "redo_tau": 0.1,
    "regrama_tau": 0.01,
    "cbp": {"replacement_rate": 1e-3, "maturity": 20, "decay": 0.99},
}
METHODS = ("none", "redo", "regrama", "cbp", "reset")
LABELS = {
    "none": "no treatment",
    "redo": "ReDo",
    "regrama": "ReGraMa",
    "cbp": "CBP",
    "reset": "fresh network (reference)",
}
#: tasks averaged at the start and at the end of the sequence in the summary
SPAN = 5
#: a method kept plasticity when its mean held-out accuracy over the last SPAN tasks is at most
#: this many points below its mean over the first SPAN (360 held-out digits: ±1.5 points of noise)
KEPT = 2.0


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits standardised per pixel (constant pixels 0), split into train and held-out."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * SETTINGS["held_out"])
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    test, train = torch.from_numpy(order[:cut]), torch.from_numpy(order[cut:])
    return xs[train], ys[train], xs[test], ys[test]


def _model() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 64
    for hidden in SETTINGS["hidden"]:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _recycler(method: str, model: nn.Module, example: Any, opt: torch.optim.Optimizer) -> Any:
    from neurodiag.treat import Recycler

    if method == "redo":
        return Recycler(model, example, opt, tau=SETTINGS["redo_tau"])
    if method == "regrama":
        return Recycler(model, example, opt, method="regrama", tau=SETTINGS["regrama_tau"])
    if method == "cbp":
        return Recycler(model, example, opt, method="cbp", **SETTINGS["cbp"])
    return None


def _measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, test: Any) -> dict[str, Any]:
    """Held-out and training accuracy, and the scan's dead / τ-dormant % over all hidden units
    (and mean effective rank where the scan measures it)."""
    import neurodiag
    from neurodiag.config import OPTION_NAMES

    with torch.no_grad():
        accuracy = float((model(test[0]).argmax(1) == test[1]).float().mean()) * 100
        train_accuracy = float((model(x).argmax(1) == y).float().mean()) * 100
    rank = "rank" in OPTION_NAMES
    options = {"rank": True} if rank else {}
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)]
    frame = neurodiag.scan(model, batches, gradients=False, **options).to_frame()
    units = frame["neurons"].sum()
    row = {
        "accuracy": round(accuracy, 2),
        "train_accuracy": round(train_accuracy, 2),
        "dead_pct": round(float((frame["dead_pct"] * frame["neurons"]).sum() / units), 2),
        "dormant_pct": round(float((frame["dormant_pct"] * frame["neurons"]).sum() / units), 2),
    }
    if rank and "effective_rank" in frame:
        row["effective_rank"] = round(float(frame["effective_rank"].mean()), 2)
    return row


def _run(method: str, data: tuple[torch.Tensor, ...], lr: float, seed: int) -> list[dict[str, Any]]:
    """One method on the whole task sequence: a row per task."""
    import neurodiag

    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    perms = np.random.default_rng(seed + 1)
    batches = torch.Generator().manual_seed(seed)
    size = SETTINGS["batch_size"]
    recycler = _recycler(method, model, (x_train[:size], y_train[:size]), opt)
    listeners = [recycler] if method in ("redo", "regrama") else []
    tasks: list[dict[str, Any]] = []
    with neurodiag.Monitor(model, steps="manual", on_window=listeners) as monitor:
        for task in range(SETTINGS["tasks"]):
            perm = torch.from_numpy(perms.permutation(64))
            x, test = x_train[:, perm], (x_test[:, perm], y_test)
            if method == "reset" and task:
                torch.manual_seed(seed + 1000 + task)
                for layer in model:
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()
                opt = torch.optim.Adam(model.parameters(), lr=lr)
            before = 0 if recycler is None else recycler.recycled
            monitor.epoch = task
            for epoch in range(SETTINGS["epochs_per_task"]):
                order = torch.randperm(len(x), generator=batches)
                for start in range(0, len(order), size):
                    index = order[start : start + size]
                    monitor.begin_step()
                    opt.zero_grad()
                    F.cross_entropy(model(x[index]), y_train[index]).backward()
                    opt.step()
                    monitor.end_step()
                    if recycler is not None:
                        recycler.step(epoch=task)  # CBP's per-step treatment; others: nothing
                if epoch == SETTINGS["epochs_per_task"] - 1:
                    row = {"task": task + 1, **_measure(model, x, y_train, test)}
                monitor.end_window("epoch")  # ReDo / ReGraMa treat here
            row["replaced"] = (0 if recycler is None else recycler.recycled) - before
            tasks.append(row)
            print(f"lr {lr} seed {seed} {method}", row, flush=True)
    if recycler is not None:
        recycler.close()
    return tasks


def _per_task(seeds: list[list[dict[str, Any]]], key: str) -> list[float]:
    """``key`` per task, averaged over the seeds."""
    return [float(np.mean([run[i][key] for run in seeds])) for i in range(len(seeds[0]))]


def _methods(runs: dict[str, Any]) -> list[str]:
    return [m for m in METHODS if m in runs]


def tables(doc: dict[str, Any]) -> str:
    """The docs block, from the saved run only (what the test recomputes): a summary row per
    learning rate and method, then held-out accuracy / dead % per task at each learning rate."""
    lrs = list(doc["runs"])
    every = [run for lr in lrs for seeds in doc["runs"][lr].values() for run in seeds]
    rank = all("effective_rank" in row for run in every for row in run)
    n = len(every[0])
    first, last = f"1–{SPAN}", f"{n - SPAN + 1}–{n}"
    head = [
        "Adam lr",
        "method",
        f"held-out acc. %, tasks {first}",
        f"tasks {last}",
        f"dead %, tasks {first}",
        f"tasks {last}",
        f"τ-dormant %, tasks {last}",
        *([f"eff. rank, tasks {first}", f"tasks {last}"] if rank else []),
        "units replaced per run",
        "kept plasticity",
    ]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- " + "| ---: " * (len(head) - 2) + "|"]

    def span(values: list[float]) -> tuple[float, float]:
        return float(np.mean(values[:SPAN])), float(np.mean(values[-SPAN:]))

    for lr in lrs:
        runs = doc["runs"][lr]
        for method in _methods(runs):
            seeds = runs[method]
            acc = span(_per_task(seeds, "accuracy"))
            dead = span(_per_task(seeds, "dead_pct"))
            drop = acc[0] - acc[1]
            ranks = span(_per_task(seeds, "effective_rank")) if rank else ()
            replaced = np.mean([sum(int(r["replaced"]) for r in run) for run in seeds])
            cells = [
                lr,
                LABELS[method],
                f"{acc[0]:.1f}",
                f"{acc[1]:.1f}",
                f"{dead[0]:.1f}",
                f"{dead[1]:.1f}",
                f"{span(_per_task(seeds, 'dormant_pct'))[1]:.1f}",
                *(f"{r:.1f}" for r in ranks),
                f"{replaced:.0f}",
                "yes" if drop <= KEPT else f"no (−{drop:.1f} points)",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for lr in lrs:
        runs = doc["runs"][lr]
        methods = _methods(runs)
        lines += [
            "",
            f"Adam lr {lr}, per task (held-out accuracy % / dead %, at the end of the task, "
            f"mean of {len(runs[methods[0]])} seeds):",
            "",
            "| task | " + " | ".join(LABELS[m] for m in methods) + " |",
            "| ---: " + "| ---: " * len(methods) + "|",
        ]
        columns = {
            m: (_per_task(runs[m], "accuracy"), _per_task(runs[m], "dead_pct")) for m in methods
        }
        for i in range(n):
            cells = [f"{columns[m][0][i]:.1f} / {columns[m][1][i]:.1f}" for m in methods]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    start, end = "<!-- continual:start -->", "<!-- continual:end -->"
    head, sep, rest = text.partition(start)
    if not sep or end not in rest:
        raise SystemExit(f"{PAGE.name} has no {start} ... {end} block")
    return f"{head}{start}\n{block}{end}{rest.partition(end)[2]}"


def figure(doc: dict[str, Any]) -> bytes:
    """Held-out accuracy and dead % per task (mean of the seeds), one line per method, a row of
    panels per learning rate (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = list(doc["runs"])
    fig, axes = plt.subplots(len(lrs), 2, figsize=(11, 3.6 * len(lrs)), squeeze=False)
    for row, lr in zip(axes, lrs, strict=True):
        runs = doc["runs"][lr]
        for method in _methods(runs):
            style = "--" if method == "reset" else "-"
            for ax, key in zip(row, ("accuracy", "dead_pct"), strict=True):
                values = _per_task(runs[method], key)
                ax.plot(range(1, len(values) + 1), values, style, label=LABELS[method])
        row[0].set(xlabel="task", ylabel="held-out accuracy %", title=f"Adam lr {lr}: accuracy")
        row[1].set(xlabel="task", ylabel="dead % of hidden units", title=f"Adam lr {lr}: dead")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def main() -> int:
    from neurodiag.atomic import write_bytes, write_text

    if "--readme-only" not in sys.argv:
        torch.set_num_threads(1)
        data = _data()
        started = time.perf_counter()
        runs = {
            str(lr): {m: [_run(m, data, lr, seed) for seed in SETTINGS["seeds"]] for m in METHODS}
            for lr in SETTINGS["lrs"]
        }
        doc = {
            "settings": SETTINGS,
            "wall_s": round(time.perf_counter() - started, 1),
            "runs": runs,
        }
        SAVED.parent.mkdir(parents=True, exist_ok=True)
        write_text(SAVED, json.dumps(doc, indent=1) + "\n")
        write_bytes(FIGURE, figure(doc))
    doc = json.loads(SAVED.read_text(encoding="utf-8"))
    block = tables(doc)
    write_text(PAGE, replace_block(PAGE.read_text(encoding="utf-8"), block))
    print(block, end="")
    print(f"wall time of the training run: {doc['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
