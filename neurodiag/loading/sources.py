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
from neurodiag.registry import Registry

Loader = Callable[[str, DataOptions], DataSource]


@dataclass(frozen=True)
class SourceKind:
    """One kind of data source: how users write it, its loader, the extra options it reads."""

    form: str
    load: Loader
    options: frozenset[str] = field(default_factory=frozenset)


class SourceRegistry:
    """Two ``Registry`` tables of data source kinds: by file suffix and by ``scheme:`` prefix."""

    def __init__(self) -> None:
        self.suffixes: Registry[SourceKind] = Registry("data source suffix")
        self.schemes: Registry[SourceKind] = Registry("data source scheme")

    def add_suffix(self, suffix: str, kind: SourceKind, *, overwrite: bool = False) -> None:
        """Route files ending in ``suffix`` (e.g. ``".csv"``) to ``kind``."""
        self.suffixes.register(suffix.lower(), kind, overwrite=overwrite)

    def add_scheme(self, scheme: str, kind: SourceKind, *, overwrite: bool = False) -> None:
        """Route specs starting with ``scheme`` (e.g. ``"sklearn:"``) to ``kind``."""
        self.schemes.register(scheme, kind, overwrite=overwrite)

    def find(self, spec: str) -> SourceKind | None:
        """The kind for ``spec``, or None."""
        for scheme, kind in self.schemes.items():
            if spec.startswith(scheme):
                return kind
        return self.suffixes.get(Path(spec).suffix.lower())

    def forms(self) -> list[str]:
        """How users can write each registered kind, for error messages and help."""
        kinds = [*self.suffixes.values(), *self.schemes.values()]
        return list(dict.fromkeys(kind.form for kind in kinds))


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
