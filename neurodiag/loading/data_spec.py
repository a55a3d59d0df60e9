"""Turning a data spec (CLI shorthand or YAML file) into a ``DataSource``.

Accepted specs:

- none: the model file's ``make_data()`` if it defines one, else ``synthetic``;
- ``synthetic``: random inputs inferred from the model (``neurodiag.loading.synthetic``);
- ``file.pt``/``.pth``, ``file.npz``/``.npy`` (``tensor_files``), ``file.csv``/``.parquet``/``.pq``
  (``tables``), ``sklearn:digits|iris|wine|breast_cancer`` (``sklearn_data``), and any source
  registered in ``neurodiag.loading.sources.REGISTRY``;
- ``loaders.py:fn`` / ``loaders.py`` (``python_source``);
- ``config.yaml``/``.yml``: a data config (``data_config``) whose ``source`` is any of the above
  except another YAML file, with paths relative to the YAML file.

Options are resolved as: keyword argument (when not None) over YAML value over default
(``batch_size`` 64, ``shuffle`` False, ``seed`` 0, no ``num_batches`` cap; synthetic data: 4
batches). ``target`` applies only to tables and ``input_shape`` only to synthetic data; giving
them for another source is an error rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.loading.data_config import DataConfig, read_data_config
from neurodiag.loading.datasource import DEFAULT_BATCH_SIZE, DEFAULT_SEED, DataOptions, DataSource
from neurodiag.loading.model_spec import LoadedModel
from neurodiag.loading.pyfile import split_file_spec
from neurodiag.loading.python_source import from_function, load_python_source
from neurodiag.loading.sources import REGISTRY, SourceRegistry
from neurodiag.loading.synthetic import synthetic_source

SYNTHETIC = "synthetic"
_YAML = (".yaml", ".yml")
_SPECIAL_OPTIONS = ("target", "input_shape")
T = TypeVar("T")


def accepted_forms(registry: SourceRegistry = REGISTRY) -> str:
    """The data spec forms, for error messages and CLI help."""
    return ", ".join([SYNTHETIC, "config.yaml", *registry.forms(), "loaders.py[:function]"])


def load_data(
    spec: str | None,
    *,
    model: nn.Module,
    loaded: LoadedModel | None = None,
    batch_size: int | None = None,
    num_batches: int | None = None,
    seed: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    target: str | None = None,
    shuffle: bool | None = None,
) -> DataSource:
    """Load the data named by ``spec`` (see the module docstring) as re-iterable CPU batches."""
    given = DataConfig(
        batch_size=batch_size,
        num_batches=num_batches,
        shuffle=shuffle,
        seed=seed,
        target=target,
        input_shape=tuple(input_shape) if input_shape is not None else None,
    )
    _check_arguments(given)
    spec = spec.strip() if spec is not None else None
    if spec is not None and spec.lower().endswith(_YAML):
        config = read_data_config(spec)
        options = _resolve(given, config)
        source = _dispatch(_rebase(config.source, Path(spec).parent), options, model, loaded)
        return replace(source, description=f"{source.description} via {spec}")
    return _dispatch(spec, _resolve(given, DataConfig()), model, loaded)


def _check_arguments(given: DataConfig) -> None:
    for name in ("batch_size", "num_batches"):
        value = getattr(given, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise NeurodiagError(f"{name} must be a positive integer, got {value!r}")
    if given.seed is not None and given.seed < 0:
        raise NeurodiagError(f"seed must be a non-negative integer, got {given.seed!r}")
    if given.input_shape is not None and (
        not given.input_shape or any(int(d) < 1 for d in given.input_shape)
    ):
        raise NeurodiagError(
            f"input_shape must be positive sizes without the batch dim (e.g. 3,32,32), "
            f"got {given.input_shape!r}"
        )


def _first(*values: T | None, default: T) -> T:
    return next((v for v in values if v is not None), default)


def _resolve(given: DataConfig, config: DataConfig) -> DataOptions:
    return DataOptions(
        batch_size=_first(given.batch_size, config.batch_size, default=DEFAULT_BATCH_SIZE),
        num_batches=_first(given.num_batches, config.num_batches, default=None),
        shuffle=_first(given.shuffle, config.shuffle, default=False),
        seed=_first(given.seed, config.seed, default=DEFAULT_SEED),
        target=_first(given.target, config.target, default=None),
        input_shape=_first(given.input_shape, config.input_shape, default=None),
    )


def _rebase(source: str | None, base: Path) -> str | None:
    """Make a path in a YAML ``source`` relative to the YAML file; schemes stay as they are."""
    if source is None or source == SYNTHETIC or _is_scheme(source):
        return source
    file_spec = split_file_spec(source)
    path_text, name = file_spec if file_spec is not None else (source, None)
    path = Path(path_text).expanduser()
    rebased = path if path.is_absolute() else base / path
    return f"{rebased.as_posix()}:{name}" if name is not None else rebased.as_posix()


def _is_scheme(source: str) -> bool:
    """``sklearn:digits``-like: a word before a colon, no path separator, not ``C:``/``x.py:f``."""
    head, colon, _ = source.partition(":")
    return bool(colon) and len(head) > 1 and not any(c in head for c in "/\\.")


def _dispatch(
    spec: str | None, options: DataOptions, model: nn.Module, loaded: LoadedModel | None
) -> DataSource:
    if spec is None:
        make_data = loaded.hook("make_data") if loaded is not None else None
        if make_data is None or loaded is None:
            spec = SYNTHETIC
        else:
            model_file = loaded.name.rsplit(":", 1)[0]
            label = f"make_data() in '{model_file}'"
            if options.input_shape is not None:
                raise NeurodiagError(
                    f"input_shape applies only to synthetic data, but {label} supplies the data; "
                    "pass the data spec 'synthetic' to use synthetic inputs"
                )
            _check_options(options, frozenset(), label)
            directory = Path(model_file).expanduser().resolve().parent
            return from_function(make_data, label, options, directory)
    if spec == SYNTHETIC:
        _check_options(options, frozenset({"input_shape"}), "synthetic data")
        return synthetic_source(model, options)
    file_spec = split_file_spec(spec)
    if file_spec is not None:
        _check_options(options, frozenset(), f"'{spec}'")
        return load_python_source(*file_spec, options)
    if spec.lower().endswith(_YAML):
        raise NeurodiagError(
            f"data config source '{spec}' is itself a YAML file; name the data source directly"
        )
    kind = REGISTRY.find(spec)
    if kind is None and Path(spec).expanduser().is_dir():
        raise NeurodiagError(
            f"data spec '{spec}' is a directory; name a file in it or a loader "
            f"(one of: {accepted_forms()})"
        )
    if kind is None:
        raise NeurodiagError(f"unknown data spec '{spec}'; use one of: {accepted_forms()}")
    _check_options(options, kind.options, f"'{spec}'")
    return kind.load(spec, options)


def _check_options(options: DataOptions, allowed: frozenset[str], what: str) -> None:
    for name in _SPECIAL_OPTIONS:
        if getattr(options, name) is not None and name not in allowed:
            where = "CSV/Parquet files" if name == "target" else "synthetic data"
            raise NeurodiagError(
                f"option '{name}' does not apply to {what} (only to {where}); remove it"
            )
