"""The registry of data sources a spec names by file suffix or by ``scheme:`` prefix.

A new data source is one loader ``(spec, options) -> DataSource`` registered here; registering a
suffix or scheme twice is refused unless ``overwrite=True``, so plug-ins cannot silently replace
each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from neurodiag.loading import mnist1d_data
from neurodiag.loading.datasource import DataOptions, DataSource
from neurodiag.loading.sklearn_data import DATASETS, SCHEME, load_sklearn
from neurodiag.loading.tables import load_table
from neurodiag.loading.tensor_files import load_numpy_file, load_torch_file

Loader = Callable[[str, DataOptions], DataSource]


@dataclass(frozen=True)
class SourceKind:
    """One kind of data source: how users write it, its loader, the extra options it reads."""

    form: str
    load: Loader
    options: frozenset[str] = field(default_factory=frozenset)


class SourceRegistry:
    """Suffix and scheme lookup of data source kinds."""

    def __init__(self) -> None:
        self._suffixes: dict[str, SourceKind] = {}
        self._schemes: dict[str, SourceKind] = {}

    def add_suffix(self, suffix: str, kind: SourceKind, *, overwrite: bool = False) -> None:
        """Route files ending in ``suffix`` (e.g. ``".csv"``) to ``kind``."""
        _put(self._suffixes, suffix.lower(), kind, overwrite)

    def add_scheme(self, scheme: str, kind: SourceKind, *, overwrite: bool = False) -> None:
        """Route specs starting with ``scheme`` (e.g. ``"sklearn:"``) to ``kind``."""
        _put(self._schemes, scheme, kind, overwrite)

    def find(self, spec: str) -> SourceKind | None:
        """The kind for ``spec``, or None."""
        for scheme, kind in self._schemes.items():
            if spec.startswith(scheme):
                return kind
        return self._suffixes.get(Path(spec).suffix.lower())

    def forms(self) -> list[str]:
        """How users can write each registered kind, for error messages and help."""
        kinds = [*self._suffixes.values(), *self._schemes.values()]
        return list(dict.fromkeys(kind.form for kind in kinds))


def _put(table: dict[str, SourceKind], key: str, kind: SourceKind, overwrite: bool) -> None:
    if key in table and not overwrite:
        raise ValueError(f"data source '{key}' is already registered; pass overwrite=True")
    table[key] = kind


def default_registry() -> SourceRegistry:
    """The built-in sources: tensor files, tables, scikit-learn datasets, MNIST-1D."""
    registry = SourceRegistry()
    torch_file = SourceKind("file.pt/.pth", load_torch_file)
    numpy_file = SourceKind("file.npz/.npy", load_numpy_file)
    table = SourceKind("file.csv/.parquet/.pq", load_table, frozenset({"target"}))
    for suffix, kind in {
        ".pt": torch_file,
        ".pth": torch_file,
        ".npz": numpy_file,
        ".npy": numpy_file,
        ".csv": table,
        ".parquet": table,
        ".pq": table,
    }.items():
        registry.add_suffix(suffix, kind)
    sklearn_form = f"{SCHEME}{'|'.join(DATASETS)}"
    registry.add_scheme(SCHEME, SourceKind(sklearn_form, load_sklearn))
    registry.add_scheme(
        mnist1d_data.SCHEME,
        SourceKind("mnist1d:train|test", mnist1d_data.load_mnist1d),
    )
    return registry


REGISTRY = default_registry()
