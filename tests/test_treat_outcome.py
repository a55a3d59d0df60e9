"""What the re-scan after a treatment shows (issue 29 item 1): the sites still ≥ 10 % dead and
why, when the cause is recognisable; the input-collapse measure C by hand; the CLI's summary
line and next step, on a small model and on the README's sample."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from typer.testing import CliRunner

import neurodiag
from neurodiag.cli import app
from neurodiag.treat.proof import assess, input_cosine
from neurodiag.treat.recycle import COLLAPSED, UNTREATED

ROOT = Path(__file__).resolve().parents[1]

COLLAPSED_MODEL = """
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(),
                          nn.Linear(32, 2))
    with torch.no_grad():  # site "1" gives every sample the same vector: layer 2's input
        model[0].weight.zero_()
        model[0].bias.uniform_(0.5, 1.0)
    return model
"""


def _collapsed() -> nn.Module:
    namespace: dict[str, object] = {}
    exec(COLLAPSED_MODEL, namespace)
    return namespace["build_model"]()  # type: ignore[operator, no-any-return]


def _batches(n: int = 3) -> list[Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(16, 8, generator=gen) for _ in range(n)]


def test_input_cosine_by_hand() -> None:
    """C = ‖mean_n x_n/‖x_n‖‖² = the mean cosine over all ordered pairs; zero rows left out."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    c = input_cosine(model, [x], {"site": "0"})["site"]
    pairs = [[1.0, 0.0, 0.5**0.5], [0.0, 1.0, 0.5**0.5], [0.5**0.5, 0.5**0.5, 1.0]]
    assert math.isclose(c, sum(map(sum, pairs)) / 9, rel_tol=1e-12)  # = 0.6476...
    same = torch.tensor([[2.0, 1.0], [4.0, 2.0], [0.2, 0.1]])  # parallel: C = 1
    assert math.isclose(input_cosine(model, [same], {"s": "0"})["s"], 1.0, rel_tol=1e-12)
    zeros = torch.zeros(3, 2)  # every input zero: the same input for every sample
    assert input_cosine(model, [zeros], {"s": "0"})["s"] == 1.0


def test_a_collapsed_input_is_the_recognised_cause() -> None:
    """Layer 2's input is the same vector for every sample, so each unit's z has one sign for
    all samples: about half of the units are dead, and so are about half of the fresh rows."""
    model = _collapsed()
    batches = _batches()
    before = neurodiag.scan(model, batches)
    assert before.row("1")["dead_pct"] == 0.0 and before.row("3")["dead_pct"] >= 25.0
    result = neurodiag.recycle(model, before, batches[0])
    after = neurodiag.scan(result.model, batches)
    outcome = assess(result, after, batches)
    assert result.outcome is outcome
    assert (outcome.recycled, outcome.treated_sites, outcome.sites) == (result.recycled, 1, 2)
    [still] = outcome.still_dead
    assert still.site == "3" and still.dead_pct == after.row("3")["dead_pct"] >= 10.0
    assert still.cause == COLLAPSED and still.input_cosine is not None
    assert math.isclose(still.input_cosine, 1.0, rel_tol=1e-9)
    assert outcome.with_cause(COLLAPSED) == (still,) and not outcome.with_cause("")


def test_a_revived_site_leaves_nothing_dead_and_an_untreated_one_says_why() -> None:
    torch.manual_seed(0)
    healthy = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        healthy[0].bias[:16] = -100.0
    batches = _batches()
    result = neurodiag.recycle(healthy, neurodiag.scan(healthy, batches), batches[0])
    outcome = assess(result, neurodiag.scan(result.model, batches), batches)
    assert outcome.recycled == 16 and outcome.still_dead == ()

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act, self.out = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(self.act(self.fc(x)) + x)

    torch.manual_seed(3)
    residual = Residual()
    with torch.no_grad():
        residual.fc.bias[:4] = -100.0
    result = neurodiag.recycle(residual, neurodiag.scan(residual, batches), batches[0])
    outcome = assess(result, neurodiag.scan(result.model, batches), batches)
    [still] = outcome.still_dead
    assert still.site == "act" and still.cause.startswith(f"{UNTREATED}: its output is read by")
    assert still.input_cosine is None


def _treat(model_file: Path, *args: str) -> str:
    out = model_file.parent / "treated.pt"
    result = CliRunner().invoke(
        app, ["treat", str(model_file), *args, "-o", str(out)], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_treat_prints_the_summary_and_the_next_step(tmp_path: Path) -> None:
    model_file = tmp_path / "collapsed.py"
    model_file.write_text(COLLAPSED_MODEL)
    lines = _treat(model_file, "--input-shape", "8", "--max-batches", "3").splitlines()
    summary = next(line for line in lines if line.startswith("recycled "))
    assert "after treatment 1 of 2 sites are still ≥ 10 % dead: 1 because the layer's input" in (
        summary
    )
    assert "mean pairwise cosine ≥ 0.9" in summary
    assert lines[-1] == (
        f"next: neurodiag compare {model_file} --input-shape 8 -a bern9:bn (an activation that "
        "cannot die), or add BatchNorm or a residual branch to those layers"
    )
    from tests.test_recycle import TREATABLE

    (tmp_path / "healthy.py").write_text(TREATABLE)
    text = _treat(tmp_path / "healthy.py", "--input-shape", "8", "--max-batches", "3")
    assert "recycled 16 units at 1 site; after treatment no site is ≥ 10 % dead" in text
    assert "next:" not in text


def test_the_readme_sample_says_why_its_deep_layers_stay_dead(tmp_path: Path) -> None:
    """The README's command on the 50-layer plain MLP: most deep sites stay ≥ 10 % dead after
    ReDo, every one of them with a collapsed input, and the summary says so."""
    model = str(ROOT / "sample_models" / "plain_mlp.py")
    data = str(ROOT / "sample_models" / "plain_mlp.yaml")
    out = tmp_path / "treated.pt"
    result = CliRunner().invoke(
        app, ["treat", model, "--data", data, "--max-batches", "2", "-o", str(out)],
        env={"COLUMNS": "400"},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = next(line for line in result.stdout.splitlines() if line.startswith("recycled "))
    still = int(summary.split("after treatment ")[1].split(" of ")[0])
    assert still >= 20 and f": {still} because the layer's input has collapsed" in summary
    assert "-a bern9:bn" in result.stdout.splitlines()[-1]
