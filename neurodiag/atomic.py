"""Atomic file writes: the new content appears whole under its name, or the old file stays.

Every file neurodiag writes (reports, baselines, JUnit XML, plots, checkpoints, the native
library) goes through :func:`replacing`: the bytes go to a temporary file in the target's own
folder (so the final rename never crosses a filesystem), are flushed and fsync'd, and only then
``os.replace`` takes the target's name; the folder is fsync'd too where the OS allows it. A full
disk, a file-size limit, an exception or a signal (any ``BaseException``) before the rename
removes the temporary file and leaves the old target byte-identical. The new file keeps the old
one's permission bits, else gets the umask's (``mkstemp`` alone would make it 0600).

No neurodiag imports: every layer may use this module.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

__all__ = ["replacing", "write_bytes", "write_text"]

_umask_lock = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it: do it under a lock and put it straight back.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not possible on Windows (and some filesystems)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into; it takes ``path``'s name on success.

    A symlink is followed (the file it points to is replaced, the link stays). A target that
    exists but is not a regular file (``/dev/null``, a FIFO, ``/dev/stdout``) cannot be replaced
    and is written in place; a folder fails as ``open`` would.
    """
    target = Path(os.path.realpath(path))
    try:
        old = target.stat()
    except FileNotFoundError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):
        with open(target, "wb") as handle:
            yield handle
        return
    mode = stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with replacing(path) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Atomically replace ``path`` with ``text`` (no newline translation)."""
    write_bytes(path, text.encode(encoding))
