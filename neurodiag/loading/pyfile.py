"""Running a user's Python file (model or data loader) and calling what it defines.

User code fails in many ways; every failure here becomes one ``NeurodiagError`` line that names
the file, the exception type and message, and the fix. The original exception is chained
(``raise ... from exc``) so ``--debug`` can still show the traceback.
"""

from __future__ import annotations

import errno
import importlib.util
import inspect
import itertools
import re
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from neurodiag.errors import NeurodiagError

_counter = itertools.count()
_MAX_LISTED = 12
USER_MODULE_PREFIX = "_neurodiag_user_"


def one_line(text: object, limit: int = 240) -> str:
    """Collapse a (possibly multi-line) message into one short line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: bad value"``: the type and the message, on one line."""
    message = one_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def why_not_a_file(path: Path) -> str:
    """Why ``path`` (``is_file()`` False) cannot be read, to follow its name in a message:
    "not found", "is a directory", "is not a regular file (a FIFO)", "is a symlink loop"."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop; point the link at a file"
        if path.is_symlink():
            return "is a broken symlink (its target does not exist); fix the link"
        return "not found; check the path"
    if stat.S_ISDIR(mode):
        return "is a directory; name a file in it"
    for test, kind in _SPECIAL_FILES:
        if test(mode):
            return f"is not a regular file ({kind}); pass a regular file"
    return "is not a regular file; pass a regular file"


def list_names(names: list[str], limit: int = _MAX_LISTED) -> str:
    """A comma-separated list, shortened with a count when long."""
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"


def split_file_spec(spec: str) -> tuple[str, str | None] | None:
    """``"a/b.py:name"`` -> ``("a/b.py", "name")``, ``"a/b.py"`` -> ``("a/b.py", None)``.

    Returns None when ``spec`` does not name a ``.py`` file. The split is at the LAST colon so
    Windows drive letters (``C:\\m.py:Net``) survive.
    """
    if spec.lower().endswith(".py"):
        return spec, None
    if ":" in spec:
        path, name = spec.rsplit(":", 1)
        if path.lower().endswith(".py"):
            return path, name
    return None


@contextmanager
def on_sys_path(directory: Path) -> Iterator[None]:
    """Make sibling imports of a user file work, and undo it afterwards."""
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def exec_python_file(path_text: str, *, what: str) -> ModuleType:
    """Execute ``path_text`` as a fresh module with a unique name and return it.

    ``what`` ("model file", "data loader file") starts every error message.
    """
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise NeurodiagError(f"{what} '{path_text}' {why_not_a_file(path)}")
    if path.suffix.lower() != ".py":
        raise NeurodiagError(f"{what} '{path_text}' is not a .py file; pass a Python file")
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"{USER_MODULE_PREFIX}{stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise NeurodiagError(f"{what} '{path_text}' cannot be loaded as Python; check the file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running so dataclasses/pickle can find the module by name.
    sys.modules[module_name] = module
    try:
        with on_sys_path(path.resolve().parent):
            spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[module_name]
        if exc.filename and Path(exc.filename).resolve() == path.resolve():
            raise NeurodiagError(
                f"{what} '{path_text}' has a syntax error at line {exc.lineno} "
                f"({one_line(exc.msg)}); fix the file"
            ) from exc
        raise _import_error(path_text, what, exc) from exc
    except (Exception, SystemExit) as exc:
        del sys.modules[module_name]
        raise _import_error(path_text, what, exc) from exc
    return module


def _import_error(path_text: str, what: str, exc: BaseException) -> NeurodiagError:
    if isinstance(exc, ImportError):
        fix = "fix the import or install the package"
    elif isinstance(exc, SyntaxError):
        fix = "fix the syntax of the imported file"
    else:
        fix = "fix the error in the file (--debug shows the traceback)"
    return NeurodiagError(
        f"{what} '{path_text}' raised {describe_exception(exc)} while importing; {fix}"
    )


def defined_names(module: ModuleType, keep: Callable[[Any], bool]) -> list[str]:
    """Public names defined (not imported) in ``module`` whose value passes ``keep``."""
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or not keep(value):
            continue
        imported = getattr(value, "__module__", module.__name__) != module.__name__
        if imported and (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        names.append(name)
    return names


def required_params(fn: Callable[..., Any]) -> list[str]:
    """Parameters of ``fn`` without defaults (empty when the signature is unknown)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.default is inspect.Parameter.empty and p.kind not in kinds]


def accepted_kwargs(fn: Callable[..., Any], offered: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``offered`` that ``fn`` declares as named parameters."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in offered.items() if k in params and params[k].kind in named}


def call_user(
    fn: Callable[..., Any], *, label: str, kwargs: Mapping[str, Any] | None = None
) -> Any:
    """Call a user factory/loader; its exceptions become one NeurodiagError line.

    ``label`` names the callable for messages, e.g. ``"build_model() in 'm.py'"``.
    """
    kwargs = dict(kwargs or {})
    missing = [p for p in required_params(fn) if p not in kwargs]
    if missing:
        raise NeurodiagError(
            f"{label} needs arguments ({', '.join(missing)}); give them defaults "
            "or name a function that takes none"
        )
    try:
        return fn(**kwargs)
    except (Exception, SystemExit) as exc:
        raise NeurodiagError(
            f"{label} raised {describe_exception(exc)}; fix it (--debug shows the traceback)"
        ) from exc
