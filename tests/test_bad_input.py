"""Table-driven: every kind of bad input is one line on stderr and exit code 2, no traceback.

Runs the real console entry point (``neurodiag.cli.main``), so usage errors from the option
parser are covered as well as the library's own ``NeurodiagError``s.
"""

from __future__ import annotations

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
}


def _tensors(tmp: Path) -> None:
    torch.save(torch.randn(4, 7), tmp / "wrong_shape.pt")
    torch.save(torch.randint(0, 5, (4, 4)), tmp / "int_inputs.pt")
    torch.save(torch.randn(0, 4), tmp / "empty.pt")
    torch.save({"weight": torch.zeros(1)}, tmp / "mismatched.pt")
    torch.save({"blob": Path("a")}, tmp / "pickled.pt")  # any non-tensor object is refused


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
]


@pytest.mark.parametrize("args,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(
    args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
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


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25
