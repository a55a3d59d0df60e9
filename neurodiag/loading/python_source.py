"""Data from user Python: ``loaders.py:fn`` specs and a model file's ``make_data()`` hook.

The function is called with no arguments, except that it receives ``batch_size``, ``shuffle`` and
``seed`` (the resolved options) for each of those it declares as a parameter. What it returns is
turned into batches by ``batching.from_user_object``: a DataLoader or any iterable of batches
(used as is; a generator is re-created by calling the function again for each pass), a map-style
Dataset (wrapped in a DataLoader), a tensor, a tuple ``(x, y)`` of tensors or a dict of tensors
(batched with the options). ``loaders.py`` alone means ``loaders.py:make_data``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from neurodiag.errors import NeurodiagError
from neurodiag.loading.batching import from_user_object
from neurodiag.loading.datasource import DataOptions, DataSource
from neurodiag.loading.pyfile import (
    accepted_kwargs,
    call_user,
    defined_names,
    exec_python_file,
    list_names,
    on_sys_path,
)

DEFAULT_FUNCTION = "make_data"


def load_python_source(path_text: str, name: str | None, options: DataOptions) -> DataSource:
    """Run ``path_text`` and batch what its function ``name`` returns."""
    module = exec_python_file(path_text, what="data loader file")
    name = name or DEFAULT_FUNCTION
    fn = vars(module).get(name)
    if not callable(fn):
        available = defined_names(module, callable)
        raise NeurodiagError(
            f"data loader file '{path_text}' has no function '{name}'; "
            f"available: {list_names(available)}"
        )
    directory = Path(path_text).expanduser().resolve().parent
    return from_function(fn, f"{name}() in '{path_text}'", options, directory)


def from_function(
    fn: Callable[..., Any], label: str, options: DataOptions, directory: Path | None
) -> DataSource:
    """Call ``fn`` (see the module docstring) and batch its result.

    ``label`` names the function in messages and in the description, e.g.
    ``"make_data() in 'models/net.py'"``; ``directory`` goes on ``sys.path`` during the call.
    """
    offered = {"batch_size": options.batch_size, "shuffle": options.shuffle, "seed": options.seed}
    kwargs = accepted_kwargs(fn, offered)

    def call() -> Any:
        if directory is None:
            return call_user(fn, label=label, kwargs=kwargs)
        with on_sys_path(directory):
            return call_user(fn, label=label, kwargs=kwargs)

    return from_user_object(call(), options, label=label, recall=call)
