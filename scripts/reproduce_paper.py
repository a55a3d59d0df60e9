#!/usr/bin/env python
"""Reproduce the paper's comparison (arXiv 2602.04264) and refresh docs/reproduction.md.

    python scripts/reproduce_paper.py                      # everything (~35 min on 2 cores)
    python scripts/reproduce_paper.py --datasets digits    # one dataset, no sweep
    python scripts/reproduce_paper.py --readme-only        # tables, figures, page from saved runs

What runs: the paper's plain 50×100 MLP (He init) on HIGGS and MNIST (the paper's datasets,
vendored samples: ``sample_models/data/``) and on scikit-learn's digits and MNIST-1D, each with
``SEEDS`` seeds. Every (dataset, seed) is ONE ``neurodiag compare`` command (saved beside its
output in ``command.txt``) over the paper's baselines — ReLU (the model itself), ReLU_res
(``relu:res``: scaled residual branch), SELU with its LeCun-normal init, SELU_BN, GELU, LReLU
0.005/0.01/0.05 — the BN controls ReLU/GELU/LReLU + BN, and the paper's Bernstein layers. Then an
lr sweep on digits looks for the regime where ReLU's worst layer reaches the paper's ~90 % dead,
with Bernstein measured in that same regime.

Written under ``docs/reproduction/``: per dataset ``runs/seed<S>.json.gz`` (each command's
whole JSON output, gzipped), ``summary.json`` (mean, std, min, max over seeds per variant and
column), ``table.md`` and the figures (``fig1``..``fig5``, drawn by ``paper_figures.py`` from the
saved runs only); ``sweep/`` likewise. The page's blocks between ``<!-- reproduction:NAME:start
-->`` and ``...:end -->`` are replaced; ``tests/test_reproduction.py`` checks that page, tables
and summaries equal what the saved runs give, so the published numbers are always the script's.
Nothing is tuned towards the paper's numbers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurodiag.atomic import write_bytes, write_text

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reproduction"
#: The page whose reproduction blocks this script rewrites.
PAGE = ROOT / "docs" / "reproduction.md"
SEEDS: tuple[int, ...] = (0, 1, 2)

#: The paper's baselines besides ReLU (the model itself, "baseline"): ReLU_res, SELU (its own
#: LeCun-normal init), SELU_BN, GELU, LReLU 0.005 / 0.01 / 0.05.
BASELINES = [
    "relu:res",
    "selu:init=lecun",
    "selu:init=lecun:bn",
    "gelu",
    "lrelu0.005",
    "lrelu0.01",
    "lrelu0.05",
]
#: BatchNorm controls: the paper's Bernstein layer has a BN in front, so BN's own effect is
#: measured on the ReLU family too.
CONTROLS = ["relu:bn", "gelu:bn", "lrelu0.01:bn"]
#: Bern_{n,0.01}[-5, 5] (the module's default range) for n = 9 and 15: Fig. 3, left panel.
BERN_WIDE = ["bern9:bn", "bern15:bn"]
#: Bern_{n,δ} on the default range of the paper (``range=auto``: ±3 std of the normalised input)
#: for δ = 0.005 / 0.01 / 0.05: Fig. 3, middle (n = 9) and right (n = 15) panels.
BERN_AUTO = [
    f"bern{n}{'' if delta == '0.01' else f':delta={delta}'}:range=auto:bn"
    for n in (9, 15)
    for delta in ("0.005", "0.01", "0.05")
]
BERNSTEIN = BERN_WIDE + BERN_AUTO
#: Training as in the earlier reproduction (the paper gives no optimiser settings).
EPOCHS, BATCH, LR = 5, 64, 1e-3
#: Post-epoch scans on the first 8 training batches (512 samples); the training window (the
#: paper's Fig. 3 window) sees every step.
SCAN_BATCHES = 8


@dataclass(frozen=True)
class Dataset:
    title: str
    model: str
    data: str
    extra: tuple[str, ...] = ()


DATASETS: dict[str, Dataset] = {
    "higgs": Dataset(
        "HIGGS (2,000 of LightGBM's 7,500 HIGGS rows, 28 features, 2 classes)",
        "sample_models/plain_mlp.py:build_higgs_model",
        "sample_models/paper_data.py:higgs_2000",
    ),
    "mnist": Dataset(
        "MNIST (2,000 original digits, 200 per class, 784 pixels)",
        "sample_models/plain_mlp.py:build_mnist_model",
        "sample_models/paper_data.py:mnist_2000",
    ),
    "digits": Dataset(
        "scikit-learn digits (1,797 samples, 64 features)",
        "sample_models/plain_mlp.py",
        "sklearn:digits",
    ),
    "mnist1d": Dataset(
        "MNIST-1D (the first 2,048 of 4,000 samples, 40 features)",
        "sample_models/plain_mlp.py:build_mnist1d_model",
        "mnist1d:train",
        ("--max-batches", "32"),
    ),
}

#: The lr / epoch sweep on digits: ReLU against Bernstein, LReLU and GELU at each point
#: (Adam lr, epochs), to find where ReLU's worst layer reaches the paper's ~90 % dead.
SWEEP_DATASET = "digits"
SWEEP_POINTS: tuple[tuple[str, int], ...] = (
    ("1e-3", 5), ("3e-3", 5), ("1e-2", 5), ("3e-2", 5), ("1e-3", 20), ("1e-2", 20),
)  # fmt: skip
SWEEP_VARIANTS = ["bern9:bn", "bern15:bn", "lrelu0.01", "gelu"]

#: Summary columns: (JSON key in a variant's summary, table header, format).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "accuracy %", "pct"),
    ("train_max_dead_pct", "worst-layer dead %, per batch (paper)", "f1"),
    ("train_mean_dead_pct", "mean dead %, per batch", "f1"),
    ("max_dead_pct", "worst-layer dead %, whole scan", "f1"),
    ("max_zero_output_pct", "worst-layer zero-output %", "f1"),
    ("max_dormant_pct", "worst-layer τ-dormant %", "f1"),
    ("min_abs_deriv", "min \\|σ'\\|", "g"),
    ("delta_bar", "δ̄", "g"),
    ("loss", "loss", "f3"),
)


# -- commands ------------------------------------------------------------------------------------
def _run_file(dataset: str, seed: int, point: tuple[str, int] | None = None) -> Path:
    if point is None:
        return OUT / dataset / "runs" / f"seed{seed}.json"
    return OUT / "sweep" / "runs" / f"lr{point[0]}-e{point[1]}-seed{seed}.json"


def command(dataset: str, seed: int, point: tuple[str, int] | None = None) -> list[str]:
    """The one ``neurodiag compare`` command of (dataset, seed), or of a sweep point."""
    ds = DATASETS[dataset]
    specs = SWEEP_VARIANTS if point is not None else BASELINES + CONTROLS + BERNSTEIN
    lr, epochs = point if point is not None else (f"{LR:g}", EPOCHS)
    out = _run_file(dataset, seed, point).relative_to(ROOT)
    return [
        "neurodiag", "compare", ds.model, "--data", ds.data, *ds.extra,
        *[arg for spec in specs for arg in ("-a", spec)],
        "--epochs", str(epochs), "--batch-size", str(BATCH), "--lr", lr,
        "--optimizer", "adam", "--seed", str(seed), "--scan-batches", str(SCAN_BATCHES),
        "--format", "json", "--output", str(out), "--no-progress",
    ]  # fmt: skip


def _execute(cmd: list[str], log: Path) -> float:
    """Run one command on one thread (tiny matmuls gain nothing from two) and gzip its JSON."""
    out = ROOT / cmd[cmd.index("--output") + 1]
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        subprocess.run(
            [sys.executable, "-m", "neurodiag", *cmd[1:]],
            cwd=ROOT,
            check=True,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    doc = json.loads(out.read_text(encoding="utf-8"))
    compact = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    # mtime=0: the same run gives the same bytes
    write_bytes(out.with_suffix(".json.gz"), gzip.compress(compact, mtime=0))
    out.unlink()
    return time.perf_counter() - started


def load_run(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as source:
        doc: dict[str, Any] = json.load(source)
    return doc


# -- summaries -----------------------------------------------------------------------------------
def _number(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _stats(values: list[float]) -> dict[str, float | None]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    mean = sum(finite) / len(finite)
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1) if len(finite) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "min": min(finite), "max": max(finite),
            "n": len(finite)}  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and column: mean, sample std, min, max over the runs (seeds)."""
    names = [v["name"] for v in runs[0]["variants"]]
    variants: dict[str, Any] = {}
    for name in names:
        rows = [next(v for v in run["variants"] if v["name"] == name) for run in runs]
        entry: dict[str, Any] = {
            key: _stats([_number(r["summary"].get(key)) for r in rows]) for key, _, _ in COLUMNS
        }
        entry["bound_ok"] = [r["summary"].get("bound_ok") for r in rows]
        entry["time_s"] = _stats([_number(r["summary"].get("time_s")) for r in rows])
        entry["notes"] = sorted({n for r in rows for n in r.get("notes", [])})
        variants[name] = entry
    return {
        "seeds": [run["seed"] for run in runs],
        "settings": runs[0]["settings"],
        "wall_time_s": sum(run["wall_time_s"] for run in runs),
        "variants": variants,
    }


def _cell(stats: dict[str, Any], fmt: str) -> str:
    mean, std = stats["mean"], stats["std"]
    if mean is None:
        return ""
    if fmt == "pct":
        mean, std = 100 * mean, 100 * std
        fmt = "f1"
    if fmt == "g":
        return f"{mean:.3g}" if stats["n"] == 1 or std == 0 else f"{mean:.3g} ± {std:.2g}"
    digits = int(fmt[1:])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(summary: dict[str, Any]) -> str:
    """The markdown table of one summary (what the test recomputes from the saved runs)."""
    header = ["variant", *[title for _, title, _ in COLUMNS], "bound ok"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for name, entry in summary["variants"].items():
        oks = [ok for ok in entry["bound_ok"] if ok is not None]
        bound = f"{sum(oks)}/{len(oks)} ✓" if oks else ""
        cells = [_cell(entry[key], fmt) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join([f"`{name}`", *cells, bound]) + " |")
    seeds = ", ".join(str(s) for s in summary["seeds"])
    minutes = summary["wall_time_s"] / 60
    lines.append("")
    lines.append(
        f"mean ± sample std over seeds {seeds}; whole runs: {minutes:.1f} min of single-thread "
        "compute"
    )
    return "\n".join(lines) + "\n"


# -- the page ------------------------------------------------------------------------------------
def readme_block(name: str) -> str:
    folder = OUT / name
    cmds = (folder / "command.txt").read_text(encoding="utf-8").strip()
    body = (folder / "table.md").read_text(encoding="utf-8")
    figures = sorted(p.name for p in folder.glob("fig*.png"))
    pictures = "\n".join(f"![{p}](reproduction/{name}/{p})" for p in figures)
    return f"```bash\n{cmds}\n```\n\n{body}\n{pictures}\n"


def replace_block(text: str, name: str, block: str) -> str:
    start, end = f"<!-- reproduction:{name}:start -->", f"<!-- reproduction:{name}:end -->"
    head, sep, rest = text.partition(start)
    if not sep or end not in rest:
        raise SystemExit(f"{PAGE.name} has no {start} ... {end} block")
    return f"{head}{start}\n{block}{end}{rest.partition(end)[2]}"


def run_paths(name: str) -> list[Path]:
    return sorted((OUT / name / "runs").glob("*.json.gz"))


def refresh(name: str) -> None:
    """summary.json, table.md, the figures and the page block of one folder, from its runs."""
    from paper_figures import draw_figures  # scripts/ is on sys.path when run as a script

    folder = OUT / name
    runs = [load_run(p) for p in run_paths(name)]
    if name == "sweep":
        summary = sweep_summary(runs)
        text = sweep_table(summary)
    else:
        summary = summarize(runs)
        text = table(summary)
    write_text(folder / "summary.json", json.dumps(summary, indent=1) + "\n")
    write_text(folder / "table.md", text)
    draw_figures(name, runs, folder, ["baseline", *BASELINES])
    page = PAGE.read_text(encoding="utf-8")
    write_text(PAGE, replace_block(page, name, readme_block(name)))


# -- the sweep -----------------------------------------------------------------------------------
def sweep_key(run: dict[str, Any]) -> str:
    """``lr=0.01 epochs=5``: the sweep point of a run, read from its own settings."""
    settings = run["settings"]
    return f"lr={settings['lr']:g} epochs={settings['epochs_requested']}"


def sweep_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per sweep point (epochs, then lr): the summary over its seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(sweep_key(run), []).append(run)

    def order(key: str) -> tuple[int, float]:
        lr, epochs = (part.split("=")[1] for part in key.split())
        return int(epochs), float(lr)

    return {key: summarize(groups[key]) for key in sorted(groups, key=order)}


def sweep_table(summary: dict[str, Any]) -> str:
    keys = ("train_max_dead_pct", "train_mean_dead_pct", "max_dead_pct", "accuracy")
    titles = {key: title for key, title, _ in COLUMNS}
    fmts = {key: fmt for key, _, fmt in COLUMNS}
    header = ["Adam lr", "epochs", "variant", *[titles[k] for k in keys]]
    lines = ["| " + " | ".join(header) + " |", "| --- | ---: | --- |" + " ---: |" * len(keys)]
    for point, part in summary.items():
        lr, epochs = (item.split("=")[1] for item in point.split())
        for name, entry in part["variants"].items():
            cells = [_cell(entry[k], fmts[k]) for k in keys]
            lines.append("| " + " | ".join([lr, epochs, f"`{name}`", *cells]) + " |")
    seeds = sorted({s for part in summary.values() for s in part["seeds"]})
    lines += ["", f"mean ± sample std over seeds {', '.join(map(str, seeds))}"]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------------
def _jobs(datasets: list[str], sweep: bool) -> list[tuple[str, list[str]]]:
    jobs = [(name, command(name, seed)) for name in datasets for seed in SEEDS]
    if sweep:
        jobs += [
            ("sweep", command(SWEEP_DATASET, seed, point))
            for point in SWEEP_POINTS
            for seed in SEEDS
        ]
    return jobs


def _save_commands(jobs: list[tuple[str, list[str]]]) -> None:
    grouped: dict[str, list[str]] = {}
    for name, cmd in jobs:
        grouped.setdefault(name, []).append(shlex.join(cmd))
    for name, cmds in grouped.items():
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "command.txt", "\n".join(cmds) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--no-sweep", action="store_true", help="skip the lr sweep")
    parser.add_argument("--workers", type=int, default=2, help="commands run at once")
    parser.add_argument(
        "--readme-only",
        action="store_true",
        help="no training: summaries, tables, figures and the page again from the saved runs",
    )
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; valid: {', '.join(DATASETS)}")
    sweep = not args.no_sweep and args.datasets == parser.get_default("datasets")
    jobs = _jobs(datasets, sweep)
    if not args.readme_only:
        _save_commands(jobs)
        logs = ROOT / "build" / "reproduction-logs"  # build/ is git-ignored
        logs.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()

        def one(job: tuple[str, list[str]]) -> None:
            name, cmd = job
            out = Path(cmd[cmd.index("--output") + 1])
            print("$", shlex.join(cmd), flush=True)
            seconds = _execute(cmd, logs / f"{name}-{out.stem}.log")
            print(f"  done {name}/{out.stem} in {seconds / 60:.1f} min", flush=True)

        with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
            list(pool.map(one, jobs))
        print(f"all runs: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    for name in dict.fromkeys(name for name, _ in jobs):
        refresh(name)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
