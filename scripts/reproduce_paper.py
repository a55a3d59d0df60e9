#!/usr/bin/env python
"""Reproduce the paper's comparison on two offline datasets and refresh docs/reproduction.md.

    python scripts/reproduce_paper.py                 # digits and MNIST-1D (~20 min on 2 cores)
    python scripts/reproduce_paper.py --datasets digits

For each dataset it runs ONE ``neurodiag compare`` command (printed, and saved beside its
output) on the paper's 50×100 plain MLP with the paper's baselines (ReLU, ReLU_res, SELU,
SELU_BN, GELU, LReLU 0.005/0.01/0.05) and Bernstein layers (degree 9 and 15 × δ 0.005/0.01/0.05
× the default range / [−5, 5], each behind batch normalisation as the paper's layer is), and
writes ``docs/reproduction/<dataset>/``: ``comparison.json`` (the full result), ``table.md`` (the
summary table), ``figures.png`` (the paper's five figures) and ``command.txt``. The page's
block between ``<!-- reproduction:<dataset>:start -->`` and ``...:end -->`` is replaced by the
command and the table; ``tests/test_reproduction.py`` checks that the page, ``table.md`` and
``comparison.json`` agree, so the published numbers are always the script's own.
Nothing is tuned towards the paper's numbers.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reproduction"
#: The page whose reproduction blocks this script rewrites.
PAGE = ROOT / "docs" / "reproduction.md"

BASELINES = ["relu:res", "selu", "selu:bn", "gelu", "lrelu0.005", "lrelu0.01", "lrelu0.05"]
#: the paper's Bern_{n,δ} (default range = range=auto: ±3 std of the normalised input, [-3, 3])
#: and Bern_{n,δ}[-5, 5], each with the batch norm of the paper's layer
BERNSTEIN = [
    f"bern{degree}{'' if delta == '0.01' else f':delta={delta}'}{rng}:bn"
    for degree in (9, 15)
    for delta in ("0.005", "0.01", "0.05")
    for rng in (":range=auto", "")
]
DATASETS = {
    "digits": ("sample_models/plain_mlp.py", "sklearn:digits"),
    "mnist1d": ("sample_models/plain_mlp.py:build_mnist1d_model", "mnist1d:train"),
}
#: Training as in the README's reproduction (the paper does not give its optimiser settings).
TRAINING = ["--epochs", "5", "--batch-size", "64", "--lr", "1e-3", "--optimizer", "adam",
            "--seed", "0"]  # fmt: skip


def command(dataset: str) -> list[str]:
    model, data = DATASETS[dataset]
    out = OUT / dataset
    specs = [arg for spec in BASELINES + BERNSTEIN for arg in ("-a", spec)]
    return [
        "neurodiag", "compare", model, "--data", data, *specs, *TRAINING,
        "--format", "json", "--output", str((out / "comparison.json").relative_to(ROOT)),
        "--plot", str((out / "figures.png").relative_to(ROOT)), "--no-progress",
    ]  # fmt: skip


def table(comparison_json: Path) -> str:
    """The README/table.md block, from the saved comparison only (what the test recomputes)."""
    import json

    import pandas as pd

    from neurodiag.compare import SUMMARY_COLUMNS
    from neurodiag.compare.render import markdown_rows

    doc = json.loads(comparison_json.read_text(encoding="utf-8"))
    frame = pd.DataFrame([v["summary"] for v in doc["variants"]], columns=list(SUMMARY_COLUMNS))
    frame = frame.drop(columns=["activation", "first_site_mag"])
    seconds = doc["wall_time_s"]
    return markdown_rows(frame) + f"\n\n(whole run: {seconds / 60:.1f} min)\n"


def _figures(out: Path) -> None:
    """Draw figures.png again from the saved JSON (the figures read nothing else)."""
    import json

    from neurodiag.plots import plot_comparison

    doc = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    plot_comparison(doc, out / "figures.png")


def _compact(path: Path) -> None:
    """The same JSON without indentation: a third of the size in the repository."""
    import json

    doc = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")


def readme_block(dataset: str) -> str:
    cmd = (OUT / dataset / "command.txt").read_text(encoding="utf-8").strip()
    body = (OUT / dataset / "table.md").read_text(encoding="utf-8")
    return f"```bash\n{cmd}\n```\n\n{body}"


def replace_block(text: str, dataset: str, block: str) -> str:
    start, end = f"<!-- reproduction:{dataset}:start -->", f"<!-- reproduction:{dataset}:end -->"
    head, sep, rest = text.partition(start)
    if not sep or end not in rest:
        raise SystemExit(f"{PAGE.name} has no {start} ... {end} block")
    return f"{head}{start}\n{block}{end}{rest.partition(end)[2]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument(
        "--readme-only",
        action="store_true",
        help="no training: table.md, figures.png and docs/reproduction.md again, from "
        "comparison.json",
    )
    args = parser.parse_args(argv)
    readme = PAGE
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        out = OUT / dataset
        out.mkdir(parents=True, exist_ok=True)
        cmd = command(dataset)
        if not args.readme_only:
            print("$", shlex.join(cmd), flush=True)
            subprocess.run([sys.executable, "-m", "neurodiag", *cmd[1:]], cwd=ROOT, check=True)
            _compact(out / "comparison.json")
            (out / "command.txt").write_text(shlex.join(cmd) + "\n", encoding="utf-8")
        (out / "table.md").write_text(table(out / "comparison.json"), encoding="utf-8")
        _figures(out)
        text = readme.read_text(encoding="utf-8")
        readme.write_text(replace_block(text, dataset, readme_block(dataset)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
