"""Refusing an output path that names an input: ``scan m.py -o m.py`` would replace the model
file with a report. Checked before any work, so the mistake costs milliseconds, not a scan."""

from __future__ import annotations

import os
from pathlib import Path

from neurodiag.errors import NeurodiagError
from neurodiag.loading.data_config import read_data_config
from neurodiag.loading.pyfile import split_file_spec


def same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same inode where both exist, else the same resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.expanduser().resolve() == b.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: the write reports it later
        return False


def model_file(model: str) -> Path | None:
    """The file a model spec executes (``file.py`` or ``file.py:factory``), None for a module."""
    spec = split_file_spec(model.strip())
    return Path(spec[0]).expanduser() if spec is not None else None


def data_files(data: str) -> list[tuple[str, Path]]:
    """The files a ``--data`` spec reads: the spec's own file, and the ``source`` file of a YAML
    data config (a config that does not parse names nothing here; loading reports it)."""
    spec = data.strip()
    file_spec = split_file_spec(spec)
    own = Path(file_spec[0] if file_spec is not None else spec).expanduser()
    if not own.is_file():
        return []
    found = [("the --data file", own)]
    if own.suffix.lower() in (".yaml", ".yml"):
        try:
            source = read_data_config(spec).source
        except NeurodiagError:
            source = None
        if source:
            named = split_file_spec(source)
            path = Path(named[0] if named is not None else source).expanduser()
            path = path if path.is_absolute() else own.parent / path
            if path.is_file():
                found.append((f"the data file that {own} names", path))
    return found


def refuse_overwriting_inputs(
    outputs: dict[str, Path | None],
    *,
    model: str | None = None,
    data: str | None = None,
    weights: Path | None = None,
    inputs: dict[str, Path | None] | None = None,
) -> None:
    """An output option that names an input (or another output) is a one-line error.

    ``outputs``: option name -> path; ``inputs``: other input options (``--config``, a
    ``--baseline`` that is read), option name -> path.
    """
    named: list[tuple[str, Path]] = []
    if model is not None and (path := model_file(model)) is not None:
        named.append(("the model file", path))
    if data:
        named.extend(data_files(data))
    if weights is not None:
        named.append(("the --weights file", weights))
    named.extend((f"the {option} file", p) for option, p in (inputs or {}).items() if p)
    written: list[tuple[str, Path]] = []
    for option, path in outputs.items():
        if path is None:
            continue
        for what, source in [*named, *((f"also {o}", p) for o, p in written)]:
            if same_file(path, source):
                raise NeurodiagError(f"{option} {path} is {what}; choose another path")
        written.append((option, path))
