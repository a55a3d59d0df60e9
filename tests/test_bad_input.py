"""Table-driven: every kind of bad input is one line on stderr and exit code 2, no traceback.

Runs the real console entry point (``neurodiag.cli.main``), so usage errors from the option
parser are covered as well as the library's own ``NeurodiagError``s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from neurodiag.cli import main

GOOD_MODEL = """
import torch
from torch import nn

def build_model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
"""

FILES: dict[str, str] = {
    "good.py": GOOD_MODEL,
    "raises.py": "import not_a_real_module_xyz\n",
    "syntax.py": "def build_model(:\n",
    "not_module.py": "def build_model():\n    return 3\n",
    "factory_raises.py": "def build_model():\n    raise ValueError('bad width')\n",
    "two_classes.py": (
        "from torch import nn\nclass A(nn.Module):\n    pass\nclass B(nn.Module):\n    pass\n"
    ),
    "model.txt": GOOD_MODEL,
    "bad.yaml": "source: [unclosed\n",
    "unknown_key.yaml": "source: synthetic\nbatch_sise: 4\n",
    "wrong_type.yaml": "source: synthetic\nbatch_size: ten\n",
    "table.csv": "a,b,c,d,label\n1,2,3,4,0\n5,6,7,8,1\n",
    "loaders.py": "def make():\n    return []\n",
    "loss_raises.py": GOOD_MODEL + "\ndef loss_fn(output, batch):\n    raise KeyError('logits')\n",
    "backward_raises.py": (
        "import torch\nfrom torch import nn\n"
        "class Boom(torch.autograd.Function):\n"
        "    @staticmethod\n    def forward(ctx, x):\n        return x * 2\n"
        "    @staticmethod\n    def backward(ctx, g):\n        raise ValueError('no backward')\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(4, 3)\n        self.act = nn.ReLU()\n"
        "    def forward(self, x):\n        return Boom.apply(self.act(self.fc(x)))\n"
        "def build_model():\n    return M()\n"
    ),
    "int_output.py": (
        "import torch\nfrom torch import nn\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(4, 3)\n        self.act = nn.ReLU()\n"
        "    def forward(self, x):\n        return self.act(self.fc(x)).argmax(1)\n"
        "def build_model():\n    return M()\n"
    ),
    "no_sites.py": "from torch import nn\ndef build_model():\n    return nn.Linear(4, 3)\n",
    "data_loader.yaml": "source: loaders.py:missing_fn\n",
    "nested.yaml": "source: bad.yaml\n",
    "negative_batch.yaml": "source: synthetic\nbatch_size: -3\n",
    "not_a_mapping.yaml": "- 1\n- 2\n",
    "no_header.json": '{"sites": []}',
    "not_json.json": "{not json",
    "thresholds_bad.yaml": "thresholds:\n  max_dead_pct: lots\n",
    "thresholds_unknown.yaml": "thresholds:\n  max_dead_percent: 5\n",
    # issue 26
    "deep.json": "[" * 100_000 + "]" * 100_000,
    "deep.yaml": "thresholds: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "dp.py": (
        "from torch import nn\ndef build_model():\n"
        "    return nn.DataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))\n"
    ),
    "loaders26.py": (
        "import torch\n"
        "def zero_rows():\n    return [(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))]\n"
        "def endless():\n    while True:\n        yield torch.randn(4, 4)\n"
    ),
    "dirmodel.py/.keep": "",
}


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo PWNED",))


def _tensors(tmp: Path) -> None:
    import pickle

    torch.save({"w": _Evil()}, tmp / "evil.pt")
    (tmp / "evil.pkl").write_bytes(pickle.dumps(_Evil()))
    (tmp / "adir").mkdir(exist_ok=True)
    torch.save({"input ids": torch.zeros(2)}, tmp / "bad_keys.pt")
    torch.save(torch.randn(4, 7), tmp / "wrong_shape.pt")
    torch.save(torch.randint(0, 5, (4, 4)), tmp / "int_inputs.pt")
    torch.save(torch.randn(0, 4), tmp / "empty.pt")
    torch.save({"weight": torch.zeros(1)}, tmp / "mismatched.pt")
    torch.save({"blob": Path("a")}, tmp / "pickled.pt")  # any non-tensor object is refused
    # issue 26
    x = torch.randn(8, 4)
    torch.save({"x": x, "y": torch.arange(8) % 3 + 1}, tmp / "labels_1_to_c.pt")
    torch.save({"x": x, "y": torch.full((8,), -100)}, tmp / "all_ignored.pt")
    torch.save({"y": torch.arange(8) % 3}, tmp / "only_y.pt")
    _baselines(tmp)
    for name in ("fifo.py", "fifo.pt"):
        if not (tmp / name).exists():
            os.mkfifo(tmp / name)
    for name in ("loop.py", "loop.pt"):
        if not (tmp / name).is_symlink():
            (tmp / name).symlink_to(tmp / name)


def _baselines(tmp: Path) -> None:
    """A valid baseline of good.py and hand-broken copies of it."""
    import json

    if not (tmp / "base.json").exists():
        main_ok = ["scan", str(tmp / "good.py"), "-f", "json", "-o", str(tmp / "base.json")]
        with pytest.raises(SystemExit) as info:
            main(main_ok)
        assert info.value.code == 0
    doc = json.loads((tmp / "base.json").read_text())
    for name, key, value in (
        ("dead_abc", "dead_pct", "abc"),
        ("dead_list", "dead_pct", [1]),
        ("notes_int", "notes", 5),
    ):
        broken = json.loads(json.dumps(doc))
        (broken["sites"][0] if key == "dead_pct" else broken)[key] = value
        (tmp / f"base_{name}.json").write_text(json.dumps(broken))


CASES: list[tuple[str, list[str], str]] = [
    ("missing model file", ["scan", "missing_model.py"], "not found"),
    ("model path is a directory", ["scan", "{tmp}"], "{tmp}"),
    ("model file not python", ["scan", "{tmp}/model.txt"], "model.txt"),
    ("model file raises on import", ["scan", "{tmp}/raises.py"], "ModuleNotFoundError"),
    ("model file syntax error", ["scan", "{tmp}/syntax.py"], "syntax error"),
    ("factory returns a non-module", ["scan", "{tmp}/not_module.py"], "int"),
    ("factory raises", ["scan", "{tmp}/factory_raises.py"], "bad width"),
    ("name not in the file", ["scan", "{tmp}/good.py:nope"], "nope"),
    ("ambiguous module classes", ["scan", "{tmp}/two_classes.py"], "two_classes.py:"),
    ("unknown package", ["scan", "not_a_pkg_xyz.sub:thing"], "not_a_pkg_xyz"),
    ("wrong input shape", ["scan", "{tmp}/good.py", "-d", "{tmp}/wrong_shape.pt"], "(batch, 4)"),
    ("wrong input dtype", ["scan", "{tmp}/good.py", "-d", "{tmp}/int_inputs.pt"], "int64"),
    ("empty dataset", ["scan", "{tmp}/good.py", "-d", "{tmp}/empty.pt"], "empty"),
    ("missing data file", ["scan", "{tmp}/good.py", "-d", "{tmp}/none.pt"], "none.pt"),
    ("unknown data shorthand", ["scan", "{tmp}/good.py", "-d", "foo:bar"], "foo:bar"),
    ("unknown sklearn dataset", ["scan", "{tmp}/good.py", "-d", "sklearn:mnist"], "mnist"),
    ("YAML syntax error", ["scan", "{tmp}/good.py", "-d", "{tmp}/bad.yaml"], "line"),
    ("YAML unknown key", ["scan", "{tmp}/good.py", "-d", "{tmp}/unknown_key.yaml"], "batch_sise"),
    ("YAML wrong type", ["scan", "{tmp}/good.py", "-d", "{tmp}/wrong_type.yaml"], "batch_size"),
    (
        "CSV target column missing",
        ["scan", "{tmp}/good.py", "-d", "{tmp}/table.csv", "--target", "nope"],
        "nope",
    ),
    ("loader yields nothing", ["scan", "{tmp}/good.py", "-d", "{tmp}/loaders.py:make"], "empty"),
    ("include glob matches nothing", ["scan", "{tmp}/good.py", "--include", "zz*"], "zz*"),
    ("checkpoint keys mismatch", ["scan", "{tmp}/good.py", "-w", "{tmp}/mismatched.pt"], "weight"),
    ("pickle refused", ["scan", "{tmp}/good.py", "-w", "{tmp}/pickled.pt"], "weights_only"),
    ("missing checkpoint", ["scan", "{tmp}/good.py", "-w", "{tmp}/nope.pt"], "nope.pt"),
    (
        "non-writable output",
        ["scan", "{tmp}/good.py", "-f", "csv", "-o", "/nonexistent-dir/out.csv"],
        "cannot write",
    ),
    ("bad input shape option", ["scan", "{tmp}/good.py", "--input-shape", "a,b"], "--input-shape"),
    ("bad feature dim option", ["scan", "{tmp}/good.py", "--feature-dim", "oops"], "GLOB=DIM"),
    ("feature dim out of range", ["scan", "{tmp}/good.py", "--feature-dim", "*=5"], "out of range"),
    ("negative eps", ["scan", "{tmp}/good.py", "--eps", "-1"], "--eps"),
    ("unknown format", ["scan", "{tmp}/good.py", "--format", "xml"], "xml"),
    ("unknown command", ["scna", "{tmp}/good.py"], "scna"),
    ("missing model argument", ["scan"], "MODEL"),
    # issue 13: tracebacks that were
    ("loss_fn raises", ["scan", "{tmp}/loss_raises.py"], "loss_fn raised KeyError"),
    ("custom backward raises", ["scan", "{tmp}/backward_raises.py"], "no backward"),
    ("integer model output", ["scan", "{tmp}/int_output.py"], "output is int64"),
    (
        "input too large to allocate",
        ["scan", "{tmp}/good.py", "--input-shape", "100000,100000,10"],
        "while producing a batch",
    ),
    ("plot format unknown", ["scan", "{tmp}/good.py", "--plot", "{tmp}/out.txt"], ".txt"),
    ("check plot format unknown", ["check", "{tmp}/good.py", "--plot", "{tmp}/o.txt"], ".txt"),
    (
        "compare plot format unknown",
        ["compare", "{tmp}/good.py", "-a", "relu", "--plot", "{tmp}/o.txt"],
        ".txt",
    ),
    # issue 13: silent passes that were
    (
        "check with every site excluded",
        ["check", "{tmp}/good.py", "--exclude", "*"],
        "--allow-empty",
    ),
    (
        "check of a model without sites",
        ["check", "{tmp}/no_sites.py"],
        "checked no activation site",
    ),
    # issue 13: misleading lines that were
    (
        "pickle with a refused global",
        ["scan", "{tmp}/good.py", "-w", "{tmp}/evil.pt"],
        "posix.system",
    ),
    (
        "plain pickle as weights",
        ["scan", "{tmp}/good.py", "-w", "{tmp}/evil.pkl"],
        "not a torch.save file (a plain pickle",
    ),
    ("directory as weights", ["scan", "{tmp}/good.py", "-w", "{tmp}/adir"], "is a directory"),
    ("directory as data", ["scan", "{tmp}/good.py", "-d", "{tmp}/adir"], "is a directory"),
    ("NaN threshold", ["check", "{tmp}/good.py", "--max-dead-pct", "nan"], "got nan"),
    ("NaN eps", ["scan", "{tmp}/good.py", "--eps", "nan"], "got nan"),
    ("NaN tau", ["scan", "{tmp}/good.py", "--tau", "nan"], "got nan"),
    ("percent threshold above 100", ["check", "{tmp}/good.py", "--max-dead-pct", "120"], "120"),
    ("include lists the real sites", ["scan", "{tmp}/good.py", "--include", "zz*"], "sites: 1"),
    (
        "data file dict with bad keys",
        ["scan", "{tmp}/good.py", "-d", "{tmp}/bad_keys.pt"],
        "expected key 'x'",
    ),
    # more of the same kind
    ("batch size zero", ["scan", "{tmp}/good.py", "--batch-size", "0"], "--batch-size"),
    ("max batches zero", ["scan", "{tmp}/good.py", "--max-batches", "0"], "--max-batches"),
    ("unknown dead window", ["scan", "{tmp}/good.py", "--dead-window", "epoch"], "epoch"),
    ("unknown mode", ["scan", "{tmp}/good.py", "--mode", "test"], "test"),
    ("unknown device", ["scan", "{tmp}/good.py", "--device", "tpu"], "tpu"),
    ("loader function missing", ["scan", "{tmp}/good.py", "-d", "{tmp}/loaders.py:nope"], "nope"),
    (
        "YAML source loader missing",
        ["scan", "{tmp}/good.py", "-d", "{tmp}/data_loader.yaml"],
        "missing_fn",
    ),
    ("YAML source is a YAML", ["scan", "{tmp}/good.py", "-d", "{tmp}/nested.yaml"], "YAML"),
    (
        "YAML negative batch size",
        ["scan", "{tmp}/good.py", "-d", "{tmp}/negative_batch.yaml"],
        "batch_size",
    ),
    ("YAML not a mapping", ["scan", "{tmp}/good.py", "-d", "{tmp}/not_a_mapping.yaml"], "mapping"),
    (
        "negative max-nonfinite",
        ["check", "{tmp}/good.py", "--max-nonfinite", "-1"],
        "--max-nonfinite",
    ),
    ("missing baseline", ["check", "{tmp}/good.py", "--baseline", "{tmp}/none.json"], "none.json"),
    (
        "baseline not JSON",
        ["check", "{tmp}/good.py", "--baseline", "{tmp}/not_json.json"],
        "not_json.json",
    ),
    (
        "update baseline without baseline",
        ["check", "{tmp}/good.py", "--update-baseline"],
        "--baseline",
    ),
    (
        "check config bad value",
        ["check", "{tmp}/good.py", "--config", "{tmp}/thresholds_bad.yaml"],
        "max_dead_pct",
    ),
    (
        "check config unknown key",
        ["check", "{tmp}/good.py", "--config", "{tmp}/thresholds_unknown.yaml"],
        "max_dead_percent",
    ),
    ("compare without activation", ["compare", "{tmp}/good.py"], "--activation"),
    ("compare unknown activation", ["compare", "{tmp}/good.py", "-a", "nope9"], "nope9"),
    ("timeout not a number", ["scan", "{tmp}/good.py", "--timeout", "soon"], "--timeout"),
    # issue 26 item 1: tracebacks that were
    *(
        (
            f"{command} with labels 1..C",
            [command, "{tmp}/good.py", "-d", "{tmp}/labels_1_to_c.pt", *extra],
            "class labels range over 1..3 but the model has 3 outputs",
        )
        for command, extra in (("scan", []), ("check", []), ("compare", ["-a", "relu"]))
    ),
    (
        "deeply nested baseline",
        ["check", "{tmp}/good.py", "--baseline", "{tmp}/deep.json"],
        "nested too deeply",
    ),
    (
        "deeply nested config",
        ["check", "{tmp}/good.py", "--config", "{tmp}/deep.yaml"],
        "nested too deeply",
    ),
    ("deeply nested data config", ["scan", "{tmp}/good.py", "-d", "{tmp}/deep.yaml"], "nested"),
    *(
        (
            f"baseline {name}",
            ["check", "{tmp}/good.py", "--baseline", f"{{tmp}}/base_{name}.json"],
            fragment,
        )
        for name, fragment in (
            ("dead_abc", "key 'dead_pct' is \"abc\", expected a number"),
            ("dead_list", "key 'dead_pct' is [1], expected a number"),
            ("notes_int", "header key 'notes' is 5, expected a list of strings"),
        )
    ),
    (
        "seed above 2**64 - 1",
        ["scan", "{tmp}/good.py", "--seed", "18446744073709551616"],
        "must be an integer from 0 to 18446744073709551615",
    ),
    ("negative seed", ["scan", "{tmp}/good.py", "--seed", "-1"], "from 0 to"),
    # issue 26 item 2: silently wrong that was
    (
        "scan of a batch with 0 rows",
        ["scan", "{tmp}/good.py", "-d", "{tmp}/loaders26.py:zero_rows"],
        "no samples",
    ),
    (
        "check of a batch with 0 rows",
        ["check", "{tmp}/good.py", "-d", "{tmp}/loaders26.py:zero_rows"],
        "no samples",
    ),
    (
        "check with every label ignored",
        ["check", "{tmp}/good.py", "-d", "{tmp}/all_ignored.pt"],
        "the loss was NaN or infinite on 1 of 1 batch(es)",
    ),
    ("infinite leaky slope", ["compare", "{tmp}/good.py", "-a", "lrelu1e309"], "finite"),
    ("NaN lr", ["compare", "{tmp}/good.py", "-a", "relu", "--lr", "nan"], "must be a finite"),
    ("NaN tolerance", ["check", "{tmp}/good.py", "--tolerance", "nan"], "must be a finite"),
    ("NaN timeout", ["scan", "{tmp}/good.py", "--timeout", "nan"], "must be a finite number"),
    ("infinite timeout", ["scan", "{tmp}/good.py", "--timeout", "inf"], "must be a finite"),
    (
        "data dict with y but no x",
        ["scan", "{tmp}/good.py", "-d", "{tmp}/only_y.pt"],
        "no 'x' (inputs) key",
    ),
    ("FIFO as model", ["scan", "{tmp}/fifo.py"], "is not a regular file (a FIFO)"),
    ("FIFO as data", ["scan", "{tmp}/good.py", "-d", "{tmp}/fifo.pt"], "not a regular file"),
    ("FIFO as weights", ["scan", "{tmp}/good.py", "-w", "{tmp}/fifo.pt"], "not a regular file"),
    ("symlink loop as model", ["scan", "{tmp}/loop.py"], "is a symlink loop"),
    ("symlink loop as data", ["scan", "{tmp}/good.py", "-d", "{tmp}/loop.pt"], "symlink loop"),
    ("directory named x.py as model", ["scan", "{tmp}/dirmodel.py"], "is a directory"),
    (
        "directory named x.py as data",
        ["scan", "{tmp}/good.py", "-d", "{tmp}/dirmodel.py"],
        "is a directory",
    ),
    # issue 26 item 3: hangs that were
    (
        "endless loader in compare",
        ["compare", "{tmp}/good.py", "-a", "relu", "-d", "{tmp}/loaders26.py:endless"],
        "pass --max-batches N",
    ),
    (
        "endless loader in treat",
        ["treat", "{tmp}/good.py", "-o", "{tmp}/t.pt", "-d", "{tmp}/loaders26.py:endless"],
        "pass --max-batches N",
    ),
    *(
        (f"Bernstein degree {spec}", args, "degree must be at most 36")
        for spec, args in (
            ("bern100000", ["compare", "{tmp}/good.py", "-a", "bern100000"]),
            ("bern45", ["compare", "{tmp}/good.py", "-a", "bern45"]),
            ("bern50", ["compare", "{tmp}/good.py", "-a", "bern50"]),
            (
                "swap:bern50",
                ["treat", "{tmp}/good.py", "-o", "{tmp}/t.pt", "--method", "swap:bern50"],
            ),
        )
    ),
]


def _write_files(tmp: Path) -> None:
    for name, text in FILES.items():
        (tmp / name).parent.mkdir(exist_ok=True)
        (tmp / name).write_text(text)


@pytest.mark.parametrize("args,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(
    args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_files(tmp_path)
    _tensors(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert fragment.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    assert "Traceback" not in out + err


def test_there_are_at_least_60_cases() -> None:
    assert len(CASES) >= 60


def test_nothing_in_a_refused_pickle_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.py").write_text(GOOD_MODEL)
    _tensors(tmp_path)
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(SystemExit):
            main(["scan", str(tmp_path / "good.py"), "-w", str(tmp_path / name)])
    out, err = capsys.readouterr()
    assert "PWNED" not in out + err
