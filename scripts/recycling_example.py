#!/usr/bin/env python
"""The measured example of docs/treat.md: a short training with and without recycling.

    python scripts/recycling_example.py          # ~1 min on 2 cores

Trains the paper's plain 50×100 ReLU MLP (``sample_models/plain_mlp.py``, He init) on
scikit-learn digits twice from the same weights, batches and seed — Adam at lr 1e-2, which kills
ReLU units fast — once plain and once with a ``neurodiag.treat.Recycler`` (ReDo at the end of
every epoch). The Monitor measures dead % over each epoch's training batches in both runs.
Saves ``docs/treat/recycling.json`` and rewrites the block of docs/treat.md between
``<!-- recycling:start -->`` and ``<!-- recycling:end -->``; ``tests/test_recycle.py`` checks
that the page equals the saved output. Nothing is tuned.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "treat.md"
SAVED = ROOT / "docs" / "treat" / "recycling.json"
SETTINGS = {"epochs": 5, "lr": 1e-2, "batch_size": 64, "seed": 0}


def _train(recycling: bool) -> list[dict[str, Any]]:
    import neurodiag
    from neurodiag.loading import load_data
    from neurodiag.treat import Recycler

    sys.path.insert(0, str(ROOT / "sample_models"))
    from plain_mlp import build_model

    torch.manual_seed(SETTINGS["seed"])
    model = build_model()
    data = load_data(
        "sklearn:digits", model=model, batch_size=SETTINGS["batch_size"], seed=SETTINGS["seed"]
    )
    batches = list(data.batches)
    opt = torch.optim.Adam(model.parameters(), lr=SETTINGS["lr"])
    recycler = Recycler(model, batches[0], opt) if recycling else None
    epochs: list[dict[str, Any]] = []
    with neurodiag.Monitor(model, on_window=[recycler] if recycler else []) as monitor:
        for epoch in range(SETTINGS["epochs"]):
            monitor.epoch = epoch
            for x, y in batches:
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
            window = monitor.end_window("epoch")
            assert window is not None
            summary = window.summary
            recycled = 0 if recycler is None else recycler.recycled
            epochs.append(
                {
                    "epoch": epoch + 1,
                    "mean_dead_pct": summary["mean_dead_pct"],
                    "max_dead_pct": summary["max_dead_pct"],
                    "loss": float(loss.detach()),
                    "recycled_so_far": recycled,
                }
            )
    return epochs


def table(doc: dict[str, Any]) -> str:
    """The docs block, from the saved run only (what the test recomputes)."""
    lines = [
        "| epoch | mean / max dead %, plain | mean / max dead %, with Recycler | units recycled "
        "| last loss, plain | last loss, with Recycler |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for plain, treated in zip(doc["plain"], doc["recycled"], strict=True):
        lines.append(
            f"| {plain['epoch']} | {plain['mean_dead_pct']:.1f} / {plain['max_dead_pct']:.1f} "
            f"| {treated['mean_dead_pct']:.1f} / {treated['max_dead_pct']:.1f} "
            f"| {treated['recycled_so_far']} | {plain['loss']:.3f} | {treated['loss']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    start, end = "<!-- recycling:start -->", "<!-- recycling:end -->"
    head, sep, rest = text.partition(start)
    if not sep or end not in rest:
        raise SystemExit(f"{PAGE.name} has no {start} ... {end} block")
    return f"{head}{start}\n{block}{end}{rest.partition(end)[2]}"


def main() -> int:
    if "--page-only" not in sys.argv:
        doc = {"settings": SETTINGS, "plain": _train(False), "recycled": _train(True)}
        SAVED.parent.mkdir(parents=True, exist_ok=True)
        SAVED.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    doc = json.loads(SAVED.read_text(encoding="utf-8"))
    PAGE.write_text(replace_block(PAGE.read_text(encoding="utf-8"), table(doc)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
