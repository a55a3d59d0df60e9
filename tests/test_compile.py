"""The Monitor and the callbacks under torch.compile: never crash, never blind, equal to eager.

Each compiled loop is compared with an eager loop on the same weights and batches (lr 0, two
micro-batches per optimizer step). Compiling uses the ``aot_eager`` backend (Dynamo traces as it
does for Inductor, the failures were Dynamo's); one ``slow`` case uses Inductor itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
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


class ModuleBlock(Block):
    """The transformer-ish block with its GELU as a module (``nn.GELU``): every site is a module,
    so after the first step it is measured inside the graph (σ' evaluated there, not a step)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(self.mlp.fc1, nn.GELU(), self.mlp.fc2)


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
    """Every column and every per-neuron value (a uniform error in Σ|a| leaves the normalised
    dormant % unchanged; the per-neuron means see it)."""
    assert got.sites == want.sites and got.sites
    for site in want.sites:
        for column in COLUMNS:
            assert got.row(site)[column] == pytest.approx(want.row(site)[column], rel=1e-5), (
                site,
                column,
            )
        mine, theirs = got.neurons[site], want.neurons[site]
        assert mine.names() == theirs.names()
        for name in theirs.names():
            torch.testing.assert_close(
                mine[name].double(), theirs[name].double(), rtol=1e-5, atol=0.0, equal_nan=True
            )


def _assert_frames_close(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal up to float summation order (the compiled graph sums in its own order)."""
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5, atol=0.0)


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
        name = "features" if kind is SmallCnn else "mlp"  # (ModuleBlock: mlp is a Sequential)
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
@pytest.mark.parametrize(
    "kind", [SmallCnn, Block, ModuleBlock], ids=["cnn", "block", "module-block"]
)
@pytest.mark.parametrize("case", ["a", "b", "c", "d"])
def test_a_compiled_loop_measures_what_the_eager_loop_measures(
    case: str, kind: type[nn.Module], training: bool
) -> None:
    report, messages = _compiled_run(kind, training, case)
    _assert_equal(report, _eager_report(kind, training))
    assert report.header.mode == ("train" if training else "eval")
    compiled = [m for m in messages if "compiled (torch.compile)" in m]
    assert len(compiled) == 1 and "first measured step runs eagerly" in compiled[0]
    (note,) = [n for n in report.header.notes if n.startswith("torch.compile:")]
    if kind is not Block:  # module sites only: measured inside the graph after the first step
        assert "measured inside the compiled graph" in note
        assert not [m for m in messages if "keeps running eagerly" in m]
        # d: neurodiag's step counter runs eagerly inside the compiled step (torch._dynamo.disable),
        # and the step breaks at its own .backward(); else one forward and one backward graph
        total, own = (2, 1) if case == "d" else (0, 0)
        assert f"graph breaks while attached: {total}, neurodiag's own: {own}" in note
    else:  # F.gelu is seen only through the function mode: eager, and said so once
        assert "ran eagerly while measured" in note and "functional activation calls" in note
        assert len([m for m in messages if "keeps running eagerly" in m]) == 1
        assert note.endswith("graph breaks while attached: 0, neurodiag's own: 0")


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
        assert callback.report is not None
        if compile_it:
            assert "measured inside the compiled graph" in callback.report.header.notes[0]
        frames.append(callback.to_frame())
    eager, compiled_frame = frames
    assert compiled_frame["dead_pct"].tolist() == [0.0, 50.0]
    _assert_frames_close(
        compiled_frame[["site", "epoch", *COLUMNS]], eager[["site", "epoch", *COLUMNS]]
    )
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
        messages.append([str(w.message) for w in caught if "neurodiag" in str(w.message)])
        assert callback.report is not None and callback.report.sites == SITES
        if compile_it:  # HF's GELUActivation (unregistered): σ' by jvp inside the graph
            assert "measured inside the compiled graph" in callback.report.header.notes[0]
        frames.append(callback.to_frame())
    assert not messages[0] and len(messages[1]) == 1 and "runs eagerly" in messages[1][0]
    eager, compiled = frames
    _assert_frames_close(compiled[["site", *COLUMNS]], eager[["site", *COLUMNS]])


def _windows(compiled: bool, nan: bool = False, **options: Any) -> pd.DataFrame:
    model = _model(SmallCnn, True)
    target: Any = torch.compile(model, backend=BACKEND) if compiled else model
    g = torch.Generator().manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with neurodiag.Monitor(target, every=1, **options) as monitor:
            for step in range(4):
                x, y = SmallCnn.batch(g), torch.randint(0, 2, (6,), generator=g)
                if nan and step >= 2:  # steps measured inside the graph
                    x[0, 0, 0, 0] = math.nan
                F.cross_entropy(target(x), y).backward()
                model.zero_grad()
    frame = monitor.to_frame()
    assert not compiled or monitor._graph.used
    return frame[["window", "step_start", "step_end", "site", *COLUMNS, "nonfinite"]]


@pytest.mark.parametrize(
    "options",
    [{}, {"measure_every": 2}, {"dead_window": "batch"}, {"nan": True}],
    ids=["every-step", "measure-every-2", "dead-per-batch", "non-finite"],
)
def test_windows_measured_inside_the_graph_equal_eager_windows(options: dict[str, Any]) -> None:
    """Each window drains the compiled states once and starts them again from empty; the
    per-call dead fraction (dead_window="batch") is folded inside the graph too."""
    _assert_frames_close(_windows(True, **options), _windows(False, **options))


def test_graph_measurement_leaves_nothing_behind() -> None:
    """Hooks gone, Dynamo's hook-guard setting back, and the model compiles again without them."""
    model = _model(SmallCnn, True)
    compiled: Any = torch.compile(model, backend=BACKEND)
    x = SmallCnn.batch(torch.Generator().manual_seed(0))
    before = _hook_counts(model)
    setting = torch._dynamo.config.skip_nnmodule_hook_guards
    with pytest.warns(RuntimeWarning), neurodiag.Monitor(compiled) as monitor:
        for _ in range(3):
            compiled(x).sum().backward()
        assert monitor._graph.attached and not torch._dynamo.config.skip_nnmodule_hook_guards
    assert _hook_counts(model) == before
    assert torch._dynamo.config.skip_nnmodule_hook_guards == setting
    assert torch._dynamo.eval_frame._stance.stance == "default"
    out = compiled(x)  # recompiles without the hooks: nothing more is measured
    out.sum().backward()
    assert monitor.measured_steps == 3


def test_compiled_measuring_eager_keeps_the_whole_loop_eager() -> None:
    model = _model(SmallCnn, True)
    compiled: Any = torch.compile(model, backend=BACKEND)
    x = SmallCnn.batch(torch.Generator().manual_seed(0))
    monitor = neurodiag.Monitor(compiled, compiled="eager")
    with pytest.warns(RuntimeWarning, match="runs eagerly, at eager speed"), monitor:
        for _ in range(3):
            compiled(x).sum().backward()
    assert not monitor._graph.used
    assert "ran eagerly while measured" in monitor.report().header.notes[0]
    with pytest.raises(ValueError, match="compiled must be"):
        neurodiag.Monitor(model, compiled="fast")  # type: ignore[arg-type]


@pytest.mark.slow
def test_inductor_graph_measurement_equals_eager() -> None:
    """Inductor itself fuses the traced reductions: the numbers stay the eager ones."""
    batches = _batches(SmallCnn)
    for backend in ("inductor",):
        model = _model(SmallCnn, True)
        compiled: Any = torch.compile(model, backend=backend)
        with pytest.warns(RuntimeWarning), neurodiag.Monitor(compiled) as monitor:
            _loop(model, _step_of(compiled), batches)
        assert monitor._graph.used
        _assert_equal(monitor.report(), _eager_report(SmallCnn, True))


def test_lightning_recycle_under_torch_compile_revives_the_killed_units(tmp_path: Any) -> None:
    """``recycle=True`` with ``trainer.fit(torch.compile(module))``: the units killed in epoch 1
    are found inside the compiled graph and recycled in place, as in the eager fit."""
    pytest.importorskip("lightning.pytorch")
    from neurodiag.integrations.lightning import NeurodiagCallback
    from tests.test_lightning import Net, _fit

    torch.manual_seed(0)
    module = Net(die_at=1, lr=0.1)
    callback = NeurodiagCallback(per_site=False, recycle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(
            torch.compile(module, backend=BACKEND),
            callback,
            max_epochs=2,
            default_root_dir=tmp_path,
        )
    assert callback.report is not None
    assert "measured inside the compiled graph" in callback.report.header.notes[0]
    assert callback.history[1].report.row("net.1")["dead_pct"] == 50.0
    assert callback.recycler is not None and callback.recycler.recycled >= 4
    assert bool((module.net[2].weight[:, :4] == 0).all())


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "soft"])
def test_pause_and_resume_inside_the_graph_equal_eager(detach: bool) -> None:
    """Steps run while paused are not measured, in the graph as eagerly; resuming measures on
    (a detached pause re-enters the graph, a soft one keeps the hooks inert)."""

    def run(compiled: bool) -> Report:
        model = _model(SmallCnn, True)
        target: Any = torch.compile(model, backend=BACKEND) if compiled else model
        g = torch.Generator().manual_seed(5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with neurodiag.Monitor(target) as monitor:
                for step in range(6):
                    if step == 2:
                        monitor.pause(detach=detach)
                    if step == 4:
                        monitor.resume()
                    x, y = SmallCnn.batch(g), torch.randint(0, 2, (6,), generator=g)
                    F.cross_entropy(target(x), y).backward()
        assert monitor.measured_steps == 4
        assert not compiled or monitor._graph.used
        return monitor.report()

    _assert_equal(run(True), run(False))
