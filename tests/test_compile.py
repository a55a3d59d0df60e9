"""The Monitor and the callbacks under torch.compile: never crash, never blind, equal to eager.

Each compiled loop is compared with an eager loop on the same weights and batches (lr 0, two
micro-batches per optimizer step). Compiling uses the ``aot_eager`` backend (Dynamo traces as it
does for Inductor, the failures were Dynamo's); one ``slow`` case uses Inductor itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import neurodiag
from neurodiag.monitor.compiled import compiled_parts
from neurodiag.report.model import Report
from tests.test_scan_behaviour import _hook_counts

BACKEND = "aot_eager"
COLUMNS = ["dead_pct", "dormant_pct", "mag", "min_abs_deriv", "inactive_pct"]
Step = Callable[[Tensor, Tensor], None]


class SmallCnn(nn.Module):
    """Conv-BN-ReLU (module sites), with a unit that never fires (bias -100)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))

    @staticmethod
    def batch(g: torch.Generator) -> Tensor:
        return torch.randn(6, 1, 6, 6, generator=g)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        with torch.no_grad():
            self.fc1.bias[:3] = -100.0  # dead GELU units: |σ'| ≈ 0 everywhere

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # a functional site


class Block(nn.Module):
    """Transformer-ish: LayerNorm, Linear-GELU-Linear (F.gelu), residual, ReLU module, head."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.mlp = Mlp()
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(x + self.mlp(self.norm(x))))

    @staticmethod
    def batch(g: torch.Generator) -> Tensor:
        return torch.randn(6, 5, 8, generator=g)


def _model(kind: type[nn.Module], training: bool) -> nn.Module:
    torch.manual_seed(0)
    return kind().train(training)


def _batches(kind: Any) -> list[list[tuple[Tensor, Tensor]]]:
    """One optimizer step's two micro-batches."""
    g = torch.Generator().manual_seed(1)
    return [[(kind.batch(g), torch.randint(0, 2, (6,), generator=g)) for _ in range(2)]]


def _step_of(model: Callable[[Tensor], Tensor]) -> Step:
    def step(x: Tensor, y: Tensor) -> None:
        out = model(x)
        per_sample = out.numel() // (2 * len(y))  # Block: one label per token
        F.cross_entropy(out.reshape(-1, 2), y.repeat_interleave(per_sample)).backward()

    return step


def _loop(model: nn.Module, step: Step, batches: list[list[tuple[Tensor, Tensor]]]) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    for micro_batches in batches * 2:  # two optimizer steps
        for x, y in micro_batches:  # gradient accumulation: two micro-batches per step
            step(x, y)
        optimizer.step()
        optimizer.zero_grad()


def _eager_report(kind: type[nn.Module], training: bool) -> Report:
    model = _model(kind, training)
    batches = _batches(kind)
    _step_of(model)(*batches[0][0])  # the compiled cases run once before measuring, so here too
    with neurodiag.Monitor(model) as monitor:
        _loop(model, _step_of(model), batches)
    return monitor.report()


def _assert_equal(got: Report, want: Report) -> None:
    assert got.sites == want.sites and got.sites
    for site in want.sites:
        for column in COLUMNS:
            assert got.row(site)[column] == pytest.approx(want.row(site)[column], rel=1e-5), (
                site,
                column,
            )


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled_run(kind: type[nn.Module], training: bool, case: str) -> tuple[Report, list[str]]:
    """The loop with ``case`` compiled: a (model compiled and run before), b (compiled inside
    the Monitor), c (a submodule compiled), d (the step function compiled)."""
    model = _model(kind, training)
    batches = _batches(kind)
    target: nn.Module = model
    if case == "a":
        target = torch.compile(model, backend=BACKEND)  # type: ignore[assignment]
    elif case == "c":
        name = "features" if kind is SmallCnn else "mlp"
        setattr(model, name, torch.compile(getattr(model, name), backend=BACKEND))
    step = _step_of(target)
    step(*batches[0][0])  # run once (and compile) before the Monitor attaches
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with neurodiag.Monitor(target) as monitor:
            if case == "b":
                step = _step_of(torch.compile(model, backend=BACKEND))
            elif case == "d":
                step = torch.compile(_step_of(model), backend=BACKEND)
            _loop(model, step, batches)
    return monitor.report(), [str(w.message) for w in caught]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", [SmallCnn, Block], ids=["cnn", "block"])
@pytest.mark.parametrize("case", ["a", "b", "c", "d"])
def test_a_compiled_loop_measures_what_the_eager_loop_measures(
    case: str, kind: type[nn.Module], training: bool
) -> None:
    report, messages = _compiled_run(kind, training, case)
    _assert_equal(report, _eager_report(kind, training))
    assert report.header.mode == ("train" if training else "eval")
    compiled = [m for m in messages if "compiled (torch.compile)" in m]
    assert len(compiled) == 1 and "runs eagerly" in compiled[0]
    assert any(
        note.startswith("torch.compile:") and note.endswith("graph breaks while attached: 0")
        for note in report.header.notes
    )


def test_sites_of_a_compiled_submodule_keep_their_eager_names() -> None:
    model = Block()
    model.mlp = torch.compile(model.mlp, backend=BACKEND)  # type: ignore[assignment]
    assert compiled_parts(model) == ["mlp"]
    with pytest.warns(RuntimeWarning, match="mlp is compiled"), neurodiag.Monitor(model) as monitor:
        model(torch.randn(2, 8))
    assert monitor.report().sites == ["mlp:gelu#0", "act"]


def test_the_compiled_model_runs_compiled_again_after_the_monitor() -> None:
    """The stance is the user's again (also after overlapping Monitors), nothing was reset and
    the model carries no hook of ours."""
    model = _model(Block, True)
    compiled: Any = torch.compile(model, backend=BACKEND)
    x = torch.randn(2, 8)
    compiled(x)
    before = _hook_counts(model)
    with pytest.warns(RuntimeWarning):
        first = neurodiag.Monitor(compiled).__enter__()
        second = neurodiag.Monitor(model).__enter__()
        first.__exit__(None, None, None)
        assert torch._dynamo.eval_frame._stance.stance == "force_eager"  # second still attached
        second.__exit__(None, None, None)
    assert torch._dynamo.eval_frame._stance.stance == "default"
    assert _hook_counts(model) == before
    from torch._dynamo.utils import counters

    frames = counters["stats"]["unique_graphs"]
    compiled(x)  # the cached graph: no new compile
    assert counters["stats"]["unique_graphs"] == frames


def test_a_deep_relu_mlp_compiled_and_run_before_a_plain_monitor_is_not_blind() -> None:
    """The issue's case: 30 ReLU layers, the compiled model run once, then ``Monitor(model)``
    around a loop of the compiled model read 0 sites without a word."""
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(30) for m in (nn.Linear(4, 4), nn.ReLU())])
    compiled: Any = torch.compile(model, backend=BACKEND)
    x = torch.randn(3, 4)
    compiled(x).sum().backward()
    monitor = neurodiag.Monitor(model)
    with pytest.warns(RuntimeWarning, match="the code calling the model is compiled"), monitor:
        compiled(x).sum().backward()
    assert len(monitor.report().sites) == 30


def test_a_loop_that_ran_but_saw_no_site_warns_and_says_so() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    with neurodiag.Monitor(model) as monitor:
        model(torch.randn(2, 3)).sum().backward()
    with pytest.warns(RuntimeWarning, match="no activation site was seen in 1 measured steps"):
        report = monitor.report()
    assert "no activation site was seen" in report.header.notes[0]


@pytest.mark.slow
def test_inductor_compiled_model_run_before_the_monitor_is_not_blind() -> None:
    """The issue's case with the default backend: compiled, run, then monitored."""
    model = _model(Block, False)
    batches = _batches(Block)
    compiled: Any = torch.compile(model)
    with torch.no_grad():
        compiled(batches[0][0][0])
    monitor = neurodiag.Monitor(compiled)
    with pytest.warns(RuntimeWarning, match="runs eagerly"), monitor, torch.no_grad():
        for x, _ in batches[0]:
            compiled(x)
    report = monitor.report()
    assert report.sites == ["mlp:gelu#0", "act"]
    assert report.row("mlp:gelu#0")["dead_pct"] == pytest.approx(100 * 3 / 16)


def test_lightning_fit_of_a_compiled_module_equals_the_eager_fit() -> None:
    pytest.importorskip("lightning.pytorch")
    from neurodiag.integrations.lightning import NeurodiagCallback
    from tests.test_lightning import Net, _fit

    frames = []
    for compile_it in (False, True):
        torch.manual_seed(0)
        module = Net(die_at=1)
        callback = NeurodiagCallback()
        fitted: Any = torch.compile(module, backend=BACKEND) if compile_it else module
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _fit(fitted, callback, max_epochs=2)
        compiled = [str(w.message) for w in caught if "compiled (torch.compile)" in str(w.message)]
        assert len(compiled) == int(compile_it)
        frames.append(callback.to_frame())
    eager, compiled_frame = frames
    assert compiled_frame["dead_pct"].tolist() == [0.0, 50.0]
    assert compiled_frame[["site", "epoch", *COLUMNS]].equals(eager[["site", "epoch", *COLUMNS]])
    assert torch._dynamo.eval_frame._stance.stance == "default"


def test_huggingface_training_with_torch_compile_equals_eager(tmp_path: Any) -> None:
    pytest.importorskip("transformers")
    from neurodiag.integrations.huggingface import NeurodiagTrainerCallback
    from tests.test_integrations import SITES, _hf_trainer

    frames, messages = [], []
    for compile_it in (False, True):
        callback = NeurodiagTrainerCallback()
        options: dict[str, Any] = {"num_train_epochs": 1, "learning_rate": 0.0}
        if compile_it:
            options.update(torch_compile=True, torch_compile_backend=BACKEND)
        trainer: Any = _hf_trainer(tmp_path / str(compile_it), [callback], **options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train()
        messages.append([str(w.message) for w in caught if "torch.compile" in str(w.message)])
        assert callback.report is not None and callback.report.sites == SITES
        frames.append(callback.to_frame())
    assert not messages[0] and len(messages[1]) == 1 and "runs eagerly" in messages[1][0]
    eager, compiled = frames
    assert compiled[["site", *COLUMNS]].equals(eager[["site", *COLUMNS]])
