"""Model specs: every accepted form, the file convention, weights, devices and every user error."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.loading import LoadedModel, load_model


def write(path: Path, text: str, *, header: bool = True) -> str:
    """Write a model file (``from torch import nn`` first unless ``header=False``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("from torch import nn\n" if header else "") + textwrap.dedent(text))
    return str(path)


@contextmanager
def user_error(*fragments: str) -> Iterator[None]:
    """Expect a NeurodiagError whose single-line message contains every fragment."""
    with pytest.raises(NeurodiagError) as info:
        yield
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- forms and convention ---------------------------------------------------------------------


def test_build_model_factory_is_called(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "def build_model():\n    return nn.Linear(3, 2)\n")
    loaded = load_model(spec)
    assert isinstance(loaded.model, nn.Linear)
    assert loaded.name == f"{spec}:build_model"


def test_get_model_factory_is_called(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "def get_model():\n    return nn.Tanh()\n")
    assert isinstance(load_model(spec).model, nn.Tanh)


def test_convention_order_prefers_build_model(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "m.py",
        """
        model = nn.ReLU()
        def get_model():
            return nn.Tanh()
        def build_model():
            return nn.GELU()
        class Net(nn.Module):
            pass
        """,
    )
    assert isinstance(load_model(spec).model, nn.GELU)


def test_module_level_model_object(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())\n")
    loaded = load_model(spec)
    assert isinstance(loaded.model, nn.Sequential)
    assert loaded.name.endswith(":model")


def test_single_no_argument_class_is_instantiated(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "m.py",
        """
        from torch.nn import Linear  # imported classes are not candidates
        class Block(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc = nn.Linear(width, width)
        class Net(nn.Module):
            def __init__(self, width=4):
                super().__init__()
                self.block = Block(width)
        """,
    )
    loaded = load_model(spec)
    assert type(loaded.model).__name__ == "Net"
    assert loaded.name.endswith(":Net")


def test_several_classes_is_an_error_listing_them(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "class A(nn.Module): pass\nclass B(nn.Module): pass\n")
    with user_error("several nn.Module classes (A, B)", f"{spec}:A"):
        load_model(spec)


def test_no_model_by_convention(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "m.py",
        "class Block(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n",
    )
    with user_error("defines no model", "build_model()", "Block"):
        load_model(spec)


def test_named_factory_class_and_object(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "m.py",
        """
        def small():
            return nn.Linear(1, 1)
        class Net(nn.Module):
            pass
        obj = nn.Tanh()
        """,
    )
    assert isinstance(load_model(f"{spec}:small").model, nn.Linear)
    assert type(load_model(f"{spec}:Net").model).__name__ == "Net"
    named = load_model(f"{spec}:obj")
    assert isinstance(named.model, nn.Tanh)
    assert named.name == f"{spec}:obj"


def test_package_spec(tmp_path: Path) -> None:
    loaded = load_model("torch.nn:Tanh")
    assert isinstance(loaded.model, nn.Tanh)
    assert loaded.name == "torch.nn:Tanh"
    assert loaded.namespace == {}
    assert isinstance(load_model("torch.nn:modules.activation.ReLU").model, nn.ReLU)


def test_sibling_import_works_and_sys_path_is_restored(tmp_path: Path) -> None:
    write(tmp_path / "pkgdir" / "helper_for_neurodiag_test.py", "WIDTH = 7\n")
    spec = write(
        tmp_path / "pkgdir" / "m.py",
        """
        from helper_for_neurodiag_test import WIDTH
        def build_model():
            import helper_for_neurodiag_test as late  # lazy sibling import in the factory
            return nn.Linear(WIDTH, late.WIDTH)
        """,
    )
    before = list(sys.path)
    model = load_model(spec).model
    assert isinstance(model, nn.Linear) and model.in_features == 7
    assert sys.path == before


def test_same_file_name_in_two_folders_gives_two_modules(tmp_path: Path) -> None:
    a = write(tmp_path / "a" / "net.py", "model = nn.Linear(1, 1)\n")
    b = write(tmp_path / "b" / "net.py", "model = nn.Linear(2, 2)\n")
    first, second = load_model(a), load_model(b)
    assert first.namespace["__name__"] != second.namespace["__name__"]
    assert first.model.in_features == 1 and second.model.in_features == 2


def test_hook_returns_callables_only(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "m.py",
        "model = nn.ReLU()\nloss_fn = 3\ndef make_data():\n    return None\n",
    )
    loaded = load_model(spec)
    assert loaded.hook("make_data") is loaded.namespace["make_data"]
    assert loaded.hook("loss_fn") is None
    assert loaded.hook("missing") is None
    assert LoadedModel(nn.ReLU(), "x", {}).hook("make_data") is None


# --- user errors ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with user_error("model file", "not found", "check the path"):
        load_model(str(tmp_path / "nope.py"))


def test_not_a_python_file(tmp_path: Path) -> None:
    with user_error("is not a .py file", "--weights"):
        load_model(str(tmp_path / "model.pt"))


def test_unknown_spec_form() -> None:
    with user_error("unknown model spec 'resnet18'", "package.module:attr"):
        load_model("resnet18")


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "x = 1\ndef broken(:\n", header=False)
    with user_error("syntax error at line 2", "fix the file"):
        load_model(spec)


def test_import_error_while_importing(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "import no_such_package_xyz\n")
    with user_error(
        f"model file '{spec}' raised ModuleNotFoundError: No module named 'no_such_package_xyz' "
        "while importing; fix the import or install the package"
    ):
        load_model(spec)


@pytest.mark.parametrize("statement", ["raise ValueError('bad\\nconfig')", "raise SystemExit(3)"])
def test_exception_while_importing(tmp_path: Path, statement: str) -> None:
    spec = write(tmp_path / "m.py", statement + "\n")
    kind = statement.split()[1].split("(")[0]
    with user_error(f"raised {kind}", "while importing"):
        load_model(spec)


def test_name_not_found_lists_available(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "def build_model():\n    return nn.ReLU()\n")
    with user_error("has no attribute 'buld_model'", "available: build_model"):
        load_model(f"{spec}:buld_model")


def test_factory_raising(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "def build_model():\n    raise RuntimeError('boom')\n")
    with user_error(f"build_model() in '{spec}' raised RuntimeError: boom"):
        load_model(spec)


def test_factory_returning_non_module(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "def build_model():\n    return 1, 2\n")
    with user_error("returned a tuple, not an nn.Module"):
        load_model(spec)


def test_factory_needing_arguments(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", "def build_model(width, depth=2):\n    pass\n")
    with user_error("needs arguments (width)"):
        load_model(spec)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [("class Cfg:\n    pass\n", "not an nn.Module"), ("thing = 3\n", "is a int")],
)
def test_named_object_that_is_not_a_model(tmp_path: Path, source: str, fragment: str) -> None:
    spec = write(tmp_path / "m.py", source)
    name = "Cfg" if "class" in source else "thing"
    with user_error(fragment):
        load_model(f"{spec}:{name}")


def test_package_not_installed() -> None:
    with user_error("cannot import module 'no_such_pkg_xyz.models'", "install the package"):
        load_model("no_such_pkg_xyz.models:resnet18")


def test_package_attribute_missing_suggests_close_names() -> None:
    with user_error("module 'torch.nn' has no attribute 'Tanhh'", "did you mean", "Tanh"):
        load_model("torch.nn:Tanhh")


# --- weights ----------------------------------------------------------------------------------

NET = "def build_model():\n    return nn.Sequential(nn.Linear(3, 4), nn.ReLU())\n"


def _trained_state() -> dict[str, torch.Tensor]:
    return {"0.weight": torch.full((4, 3), 0.5), "0.bias": torch.arange(4.0)}


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "data_parallel"])
def test_weights_layouts_load(tmp_path: Path, layout: str) -> None:
    spec = write(tmp_path / "m.py", NET)
    state = _trained_state()
    content: object = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "data_parallel": {f"module.{k}": v for k, v in state.items()},
    }[layout]
    torch.save(content, tmp_path / "w.pt")
    model = load_model(spec, weights=str(tmp_path / "w.pt")).model
    assert torch.equal(model.state_dict()["0.bias"], torch.arange(4.0))
    assert torch.equal(model.state_dict()["0.weight"], torch.full((4, 3), 0.5))


def test_weights_missing_and_unexpected_keys(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", NET)
    torch.save({"0.weight": torch.zeros(4, 3), "head.bias": torch.zeros(2)}, tmp_path / "w.pt")
    with user_error("missing keys 0.bias", "unexpected keys head.bias"):
        load_model(spec, weights=str(tmp_path / "w.pt"))


def test_weights_shape_mismatch(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", NET)
    torch.save({"0.weight": torch.zeros(5, 3), "0.bias": torch.zeros(5)}, tmp_path / "w.pt")
    with user_error("shape mismatch", "0.weight (checkpoint (5, 3), model (4, 3))"):
        load_model(spec, weights=str(tmp_path / "w.pt"))


def test_pickled_model_is_refused_for_safety(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", NET)
    torch.save(nn.Sequential(nn.Linear(3, 4)), tmp_path / "whole.pt")
    with user_error("refused for safety", "state_dict()"):
        load_model(spec, weights=str(tmp_path / "whole.pt"))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(torch.zeros(3), "holds a Tensor, not a state_dict"), ({"epoch": 3}, "keys epoch")],
)
def test_weights_without_state_dict(tmp_path: Path, content: object, fragment: str) -> None:
    spec = write(tmp_path / "m.py", NET)
    torch.save(content, tmp_path / "w.pt")
    with user_error(fragment):
        load_model(spec, weights=str(tmp_path / "w.pt"))


def test_weights_file_missing_or_corrupt(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", NET)
    with user_error("weights file", "not found"):
        load_model(spec, weights=str(tmp_path / "none.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with user_error("cannot read weights file", "torch.save"):
        load_model(spec, weights=str(tmp_path / "bad.pt"))


# --- device -----------------------------------------------------------------------------------


def test_model_is_moved_to_device(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", NET)
    model = load_model(spec, device=torch.device("meta")).model
    assert all(p.device.type == "meta" for p in model.parameters())


def test_unknown_device(tmp_path: Path) -> None:
    spec = write(tmp_path / "m.py", NET)
    with user_error("cannot use device 'gpu0'"):
        load_model(spec, device="gpu0")
