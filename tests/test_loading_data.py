"""Data specs: synthetic inference, make_data, files, tables, sklearn, loader functions, YAML."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.loading import (
    DataOptions,
    LoadedModel,
    SourceKind,
    SourceRegistry,
    load_data,
    load_model,
)
from neurodiag.loading.batching import TensorBatches

MLP = nn.Sequential(nn.Linear(4, 3), nn.ReLU())


@contextmanager
def user_error(*fragments: str) -> Iterator[None]:
    """Expect a NeurodiagError whose single-line message contains every fragment."""
    with pytest.raises(NeurodiagError) as info:
        yield
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def batches(source: Any) -> list[Any]:
    return list(source.batches)


def model_file(tmp_path: Path, body: str) -> LoadedModel:
    code = "import torch\nfrom torch import nn\nmodel = nn.Linear(4, 3)\n" + textwrap.dedent(body)
    return load_model(write(tmp_path / "m.py", code))


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_from_linear_is_seeded_and_repeatable() -> None:
    rng_before = torch.get_rng_state()
    source = load_data(None, model=MLP, batch_size=8)
    first, second = batches(source), batches(source)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert len(first) == 4 and source.num_samples == 32
    assert all(b.shape == (8, 4) and b.dtype == torch.float32 for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other = batches(load_data("synthetic", model=MLP, batch_size=8, seed=1))
    assert not torch.equal(first[0], other[0])
    assert "synthetic (B, 4) standard normal" in source.description


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.Conv1d(2, 4, 3), (2, 64)),
        (nn.Conv2d(3, 4, 3), (3, 32, 32)),
        (nn.Conv3d(1, 4, 3), (1, 16, 16, 16)),
        (nn.ConvTranspose2d(5, 4, 3), (5, 32, 32)),
    ],
)
def test_synthetic_conv_default_sizes(layer: nn.Module, shape: tuple[int, ...]) -> None:
    model = nn.Sequential(layer, nn.ReLU())
    batch = batches(load_data(None, model=model, batch_size=2, num_batches=1))[0]
    assert batch.shape == (2, *shape)
    model(batch)


def test_synthetic_input_shape_override_and_cap() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    source = load_data(None, model=model, batch_size=2, num_batches=2, input_shape=(3, 9, 7))
    assert [b.shape for b in batches(source)] == [(2, 3, 9, 7)] * 2


def test_synthetic_embedding_token_ids() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 2))
    batch = batches(load_data(None, model=model, batch_size=5))[0]
    assert batch.shape == (5, 16) and batch.dtype == torch.int64
    assert int(batch.min()) >= 0 and int(batch.max()) < 10
    model(batch)


def test_synthetic_without_known_layer() -> None:
    with user_error("cannot infer a synthetic input for Tanh", "input_shape"):
        load_data(None, model=nn.Tanh())
    batch = batches(load_data(None, model=nn.Tanh(), input_shape=(2, 3), batch_size=4))[0]
    assert batch.shape == (4, 2, 3)


def test_synthetic_hugging_face_bert_is_callable() -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    model = BertModel(config)
    source = load_data(None, model=model, batch_size=3)
    batch = batches(source)[0]
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (3, 16) and int(batch["input_ids"].max()) < 100
    output = model(**batch)
    assert output.last_hidden_state.shape == (3, 16, 32)
    assert "BertModel.config" in source.description


# --- make_data hook ---------------------------------------------------------------------------


def test_make_data_tuple_is_batched(tmp_path: Path) -> None:
    loaded = model_file(
        tmp_path, "def make_data():\n    return torch.zeros(10, 4), torch.arange(10)\n"
    )
    source = load_data(None, model=loaded.model, loaded=loaded, batch_size=4)
    got = batches(source)
    assert [x.shape[0] for x, _ in got] == [4, 4, 2]  # last partial batch kept
    assert torch.equal(torch.cat([y for _, y in got]), torch.arange(10))
    assert source.num_samples == 10 and "make_data() in" in source.description


def test_make_data_receives_declared_options(tmp_path: Path) -> None:
    loaded = model_file(
        tmp_path,
        """
        def make_data(seed, batch_size):
            data = torch.full((7, 4), float(seed))
            return torch.utils.data.DataLoader(data, batch_size=batch_size)
        """,
    )
    source = load_data(None, model=loaded.model, loaded=loaded, batch_size=3, seed=5)
    got = batches(source)
    assert [len(b) for b in got] == [3, 3, 1] and float(got[0][0, 0]) == 5.0
    assert source.num_samples == 7


def test_make_data_generator_is_reiterable(tmp_path: Path) -> None:
    loaded = model_file(
        tmp_path,
        """
        def make_data():
            for i in range(3):
                yield torch.full((2, 4), float(i))
        """,
    )
    source = load_data(None, model=loaded.model, loaded=loaded, num_batches=2)
    first, second = batches(source), batches(source)
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_make_data_list_of_batches_and_numpy(tmp_path: Path) -> None:
    loaded = model_file(
        tmp_path,
        """
        import numpy as np
        def make_data():
            return [(np.zeros((2, 4)), np.array([1, 0])), (np.ones((2, 4)), np.array([0, 1]))]
        """,
    )
    got = batches(load_data(None, model=loaded.model, loaded=loaded))
    assert len(got) == 2
    assert got[0][0].dtype == torch.float32 and got[0][1].dtype == torch.int64


def test_make_data_dataset_is_wrapped_in_a_loader(tmp_path: Path) -> None:
    loaded = model_file(
        tmp_path,
        "def make_data():\n    return torch.utils.data.TensorDataset(torch.zeros(5, 4))\n",
    )
    got = batches(load_data(None, model=loaded.model, loaded=loaded, batch_size=2))
    assert [b[0].shape[0] for b in got] == [2, 2, 1]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("def make_data():\n    return 3\n", "returned a int"),
        ("def make_data():\n    raise KeyError('split')\n", "raised KeyError: 'split'"),
        ("def make_data():\n    return []\n", "returned an empty list"),
        ("def make_data():\n    return iter([])\n", "yielded no batches"),
    ],
)
def test_make_data_errors(tmp_path: Path, body: str, fragment: str) -> None:
    loaded = model_file(tmp_path, body)
    with user_error(fragment):
        batches(load_data(None, model=loaded.model, loaded=loaded))


def test_synthetic_spec_bypasses_make_data_and_input_shape_needs_it(tmp_path: Path) -> None:
    loaded = model_file(tmp_path, "def make_data():\n    return torch.zeros(3, 4)\n")
    source = load_data("synthetic", model=loaded.model, loaded=loaded)
    assert source.description.startswith("synthetic")
    with user_error("input_shape applies only to synthetic data", "'synthetic'"):
        load_data(None, model=loaded.model, loaded=loaded, input_shape=(4,))


# --- tensor files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        (torch.zeros(10, 4, dtype=torch.float64), torch.arange(10, dtype=torch.int32)),
        [torch.zeros(10, 4, dtype=torch.float64), torch.arange(10, dtype=torch.int32)],
        {"x": torch.zeros(10, 4, dtype=torch.float64), "y": torch.arange(10, dtype=torch.int32)},
    ],
)
def test_torch_file_forms_and_dtypes(tmp_path: Path, content: Any) -> None:
    torch.save(content, tmp_path / "d.pt")
    source = load_data(str(tmp_path / "d.pt"), model=MLP, batch_size=4)
    got = batches(source)
    assert [x.shape for x, _ in got] == [(4, 4), (4, 4), (2, 4)]
    assert got[0][0].dtype == torch.float32 and got[0][1].dtype == torch.int64
    assert source.num_samples == 10 and "10 samples" in source.description


def test_torch_file_single_tensor(tmp_path: Path) -> None:
    torch.save(torch.ones(3, 4), tmp_path / "d.pth")
    got = batches(load_data(str(tmp_path / "d.pth"), model=MLP))
    assert len(got) == 1 and isinstance(got[0], torch.Tensor) and got[0].shape == (3, 4)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ({"input ids": torch.zeros(2)}, "expected key 'x'"),
        (torch.zeros(0, 4), "is empty (0 samples)"),
        ((torch.zeros(3, 4), torch.zeros(2)), "x has 3, y has 2"),
        (nn.Linear(2, 2), "refused for safety"),
    ],
)
def test_torch_file_errors(tmp_path: Path, content: Any, fragment: str) -> None:
    torch.save(content, tmp_path / "d.pt")
    with user_error(fragment):
        load_data(str(tmp_path / "d.pt"), model=MLP)


def test_numpy_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "named.npz", y=np.arange(6), x=np.ones((6, 4)))
    np.savez(tmp_path / "positional.npz", np.ones((6, 4)), np.arange(6))
    np.save(tmp_path / "x.npy", np.ones((6, 4), dtype=np.float16))
    for name in ("named.npz", "positional.npz"):
        x, y = batches(load_data(str(tmp_path / name), model=MLP))[0]
        assert x.shape == (6, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    only_x = batches(load_data(str(tmp_path / "x.npy"), model=MLP))[0]
    assert isinstance(only_x, torch.Tensor) and only_x.dtype == torch.float32


def test_numpy_object_array_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with user_error("cannot read data file", "numeric arrays"):
        load_data(str(tmp_path / "obj.npy"), model=MLP)


# --- tables -----------------------------------------------------------------------------------


def frame() -> pd.DataFrame:
    table: pd.DataFrame = pd.DataFrame(
        {
            "a": [0.0, 1.0, 2.0, 3.0, 4.0],
            "b": [1, 2, 3, 4, 5],
            "flag": [True, False, True, False, True],
            "label": [0, 1, 0, 1, 2],
            "score": [0.5, 1.5, 2.5, 3.5, 4.5],
        }
    )
    return table


def test_csv_default_target_column(tmp_path: Path) -> None:
    frame().to_csv(tmp_path / "t.csv", index=False)
    source = load_data(str(tmp_path / "t.csv"), model=MLP, batch_size=2)
    x, y = batches(source)[0]
    assert x.shape == (2, 4) and x.dtype == torch.float32  # a, b, flag, score
    assert y.dtype == torch.int64 and y.tolist() == [0, 1]
    assert "target 'label'" in source.description


def test_parquet_explicit_float_target(tmp_path: Path) -> None:
    frame().to_parquet(tmp_path / "t.parquet")
    x, y = batches(load_data(str(tmp_path / "t.parquet"), model=MLP, target="score"))[0]
    assert x.shape == (5, 4) and y.dtype == torch.float32 and y[0].item() == 0.5


def test_table_text_target_becomes_sorted_codes_and_no_target(tmp_path: Path) -> None:
    table = pd.DataFrame({"f": [1.0, 2.0, 3.0], "species": ["virginica", "setosa", "virginica"]})
    table.to_csv(tmp_path / "s.csv", index=False)
    _, y = batches(load_data(str(tmp_path / "s.csv"), model=MLP, target="species"))[0]
    assert y.tolist() == [1, 0, 1]
    pd.DataFrame({"f": [1.0, 2.0]}).to_parquet(tmp_path / "x.pq")
    only_x = batches(load_data(str(tmp_path / "x.pq"), model=MLP))[0]
    assert isinstance(only_x, torch.Tensor) and only_x.shape == (2, 1)


@pytest.mark.parametrize(
    ("text", "target", "fragment"),
    [
        ("a,label\n1,0\n", "nope", "target column 'nope' not in"),
        ("a,name,label\n1,x,0\n", None, "feature columns name are not numeric"),
        ("a,label\n", None, "has no rows"),
        ("", None, "is empty"),
        ("label\n1\n", None, "no feature columns"),
    ],
)
def test_table_errors(tmp_path: Path, text: str, target: str | None, fragment: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    with user_error(fragment):
        load_data(str(tmp_path / "t.csv"), model=MLP, target=target)


# --- sklearn ----------------------------------------------------------------------------------


def test_sklearn_digits() -> None:
    source = load_data("sklearn:digits", model=MLP, batch_size=256)
    got = batches(source)
    assert source.num_samples == 1797 and len(got) == 8 and got[-1][0].shape == (5, 64)
    x = torch.cat([b[0] for b in got])
    y = torch.cat([b[1] for b in got])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and int(y.max()) == 9
    assert x.mean(0).abs().max() < 1e-4  # standardised
    assert "sklearn:digits (1797 samples" in source.description


def test_sklearn_unknown_and_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    with user_error("unknown scikit-learn dataset 'mnist'", "sklearn:digits"):
        load_data("sklearn:mnist", model=MLP)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with user_error("pip install 'neurodiag[sklearn]'"):
        load_data("sklearn:iris", model=MLP)


def test_mnist1d_is_generated_without_download_and_leaves_the_global_rngs_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("mnist1d")
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    train = load_data("mnist1d:train", model=MLP, batch_size=1000)
    assert random.getstate() == python_state
    assert (np.random.get_state()[1] == numpy_state[1]).all()
    x = torch.cat([b[0] for b in batches(train)])
    y = torch.cat([b[1] for b in batches(train)])
    assert (
        x.shape == (4000, 40)
        and y.dtype == torch.int64
        and sorted(set(y.tolist())) == list(range(10))
    )
    assert x.mean(0).abs().max() < 1e-4  # standardised
    assert "mnist1d:train (4000 samples, 40 standardised features, 10 classes" in train.description
    again = torch.cat([b[0] for b in batches(load_data("mnist1d:", model=MLP, batch_size=1000))])
    assert torch.equal(again, x)  # the default split, the same data every time
    test = load_data("mnist1d:test", model=MLP, batch_size=1000)
    assert test.num_samples == 1000
    with user_error("unknown MNIST-1D split 'val'", "mnist1d:train or mnist1d:test"):
        load_data("mnist1d:val", model=MLP)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with user_error("pip install 'neurodiag[mnist1d]'"):
        load_data("mnist1d:train", model=MLP)


# --- loader functions -------------------------------------------------------------------------


def test_loader_function_spec(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "loaders.py",
        """
        import torch
        def make_loader():
            data = torch.utils.data.TensorDataset(torch.zeros(6, 4), torch.zeros(6).long())
            return torch.utils.data.DataLoader(data, batch_size=4)
        def make_data():
            return torch.ones(3, 4)
        """,
    )
    source = load_data(f"{spec}:make_loader", model=MLP)
    assert [b[0].shape[0] for b in batches(source)] == [4, 2] and source.num_samples == 6
    assert "make_loader() in" in source.description and "DataLoader" in source.description
    assert batches(load_data(spec, model=MLP))[0].shape == (3, 4)  # file alone: make_data
    with user_error("has no function 'nope'", "make_loader"):
        load_data(f"{spec}:nope", model=MLP)


# --- YAML -------------------------------------------------------------------------------------


def test_yaml_full_schema_with_relative_source(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    frame().to_csv(tmp_path / "data" / "t.csv", index=False)
    spec = write(
        tmp_path / "cfg.yaml",
        """
        source: data/t.csv
        batch_size: 2
        num_batches: 2
        shuffle: true
        seed: 3
        target: score
        """,
    )
    source = load_data(spec, model=MLP)
    got = batches(source)
    assert len(got) == 2 and source.num_samples == 4
    assert got[0][1].dtype == torch.float32  # target: score
    assert "shuffled (seed 3)" in source.description and "via" in source.description
    assert [b[1].tolist() for b in got] == [b[1].tolist() for b in batches(source)]


def test_call_arguments_override_yaml(tmp_path: Path) -> None:
    spec = write(tmp_path / "c.yml", "source: synthetic\nbatch_size: 8\ninput_shape: [4]\n")
    source = load_data(spec, model=MLP, batch_size=2, num_batches=1)
    assert [b.shape for b in batches(source)] == [(2, 4)]
    assert batches(load_data(spec, model=MLP))[0].shape == (8, 4)


def test_yaml_without_source_uses_the_model_default(tmp_path: Path) -> None:
    spec = write(tmp_path / "c.yaml", "batch_size: 5\n")
    assert batches(load_data(spec, model=MLP))[0].shape == (5, 4)
    assert batches(load_data(write(tmp_path / "e.yaml", ""), model=MLP))[0].shape == (64, 4)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("batchsize: 3\n", ("unknown key 'batchsize'", "did you mean 'batch_size'", "valid keys")),
        ("batch_size: abc\n", ("key 'batch_size' must be a positive integer", "got str")),
        ("shuffle: 1\n", ("key 'shuffle' must be true or false", "got int")),
        ("input_shape: [3, 0]\n", ("key 'input_shape' must be a list of positive integers",)),
        ("source: sklearn:digits\nbatch_size: [1\n", ("not valid YAML", "line 3")),
        ("- source\n", ("must be a mapping",)),
        ("source: other.yaml\n", ("is itself a YAML file",)),
    ],
)
def test_yaml_errors(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    spec = write(tmp_path / "c.yaml", text)
    with user_error(*fragments):
        load_data(spec, model=MLP)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with user_error("data config", "not found"):
        load_data(str(tmp_path / "none.yaml"), model=MLP)


# --- dispatch errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kwargs", "fragments"),
    [
        ("imagenet", {}, ("unknown data spec 'imagenet'", "sklearn:digits", "file.csv")),
        ("data.txt", {}, ("unknown data spec 'data.txt'",)),
        ("MISSING/d.pt", {}, ("data file", "not found")),
        ("MISSING/t.csv", {}, ("data file", "not found")),
        ("sklearn:iris", {"target": "y"}, ("option 'target' does not apply", "CSV/Parquet")),
        ("sklearn:iris", {"input_shape": (4,)}, ("option 'input_shape' does not apply",)),
        ("sklearn:iris", {"batch_size": 0}, ("batch_size must be a positive integer",)),
        (None, {"num_batches": -1}, ("num_batches must be a positive integer",)),
    ],
)
def test_dispatch_errors(
    tmp_path: Path, spec: str | None, kwargs: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    if spec is not None:
        spec = spec.replace("MISSING", str(tmp_path / "missing"))
    with user_error(*fragments):
        load_data(spec, model=MLP, **kwargs)


def test_registry_refuses_silent_override() -> None:
    registry = SourceRegistry()
    kind = SourceKind("file.foo", lambda spec, options: load_data(None, model=MLP))
    registry.add_suffix(".foo", kind)
    with pytest.raises(ValueError, match="already registered"):
        registry.add_suffix(".FOO", kind)
    registry.add_suffix(".foo", kind, overwrite=True)
    assert registry.find("x.foo") is kind and registry.forms() == ["file.foo"]


# --- batching property ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(1, 40),
    batch_size=st.integers(1, 12),
    cap=st.one_of(st.none(), st.integers(1, 6)),
    shuffle=st.booleans(),
    seed=st.integers(0, 5),
)
def test_tensor_batches_cover_the_data_in_order(
    total: int, batch_size: int, cap: int | None, shuffle: bool, seed: int
) -> None:
    x = torch.arange(total)
    options = DataOptions(batch_size=batch_size, num_batches=cap, shuffle=shuffle, seed=seed)
    tb = TensorBatches((x, x * 10), options, label="test")
    got = list(tb)
    seen = torch.cat([b[0] for b in got])
    assert len(got) == len(tb) and seen.numel() == tb.num_samples
    assert all(len(b[0]) == batch_size for b in got[:-1]) and 0 < len(got[-1][0]) <= batch_size
    assert all(torch.equal(b[1], b[0] * 10) for b in got)  # x and y stay paired
    if cap is None:
        assert sorted(seen.tolist()) == list(range(total))  # nothing dropped
    if not shuffle:
        assert seen.tolist() == list(range(seen.numel()))
    assert torch.equal(seen, torch.cat([b[0] for b in tb]))  # every pass is the same


def test_batches_are_copies_of_the_dataset() -> None:
    data = torch.zeros(4, 2)
    for batch in TensorBatches(data, DataOptions(batch_size=2), label="test"):
        batch.add_(1)  # a model editing its input in place
    assert torch.equal(data, torch.zeros(4, 2))


def test_dataloader_len_is_reported(tmp_path: Path) -> None:
    loaded = model_file(
        tmp_path,
        "def make_data():\n    return torch.utils.data.DataLoader(range(10), batch_size=3)\n",
    )
    source = load_data(None, model=loaded.model, loaded=loaded, num_batches=2)
    assert len(source.batches) == 2  # type: ignore[arg-type]
    assert source.num_samples == 6
