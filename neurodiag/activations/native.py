"""The fused CPU kernels of :mod:`bernstein_kernel.c`, compiled on first use and loaded with ctypes.

Why: eagerly, PyTorch makes one pass over the tensor per op, ~70 for a degree-9 Bernstein
forward+backward, and on small inputs each pass costs its dispatch; the C kernels make one
pass each way (measured in ``benchmarks/overhead.py --models d``).

What is executed, exactly: the C compiler named by ``$CC``, else the first of ``cc``, ``gcc``,
``clang`` on ``PATH``, on the one C file shipped in this package (no other input), with
``-O3 -shared -fPIC`` plus ``-mavx2 -mfma`` where PyTorch itself detects AVX2 on this CPU. The
library is written atomically to ``$NEURODIAG_CACHE`` (default ``~/.cache/neurodiag``, created
0700) under a name hashing the source, the compiler and the flags plus the SHA-256 of the
library's own bytes, and reused from there. Nothing is downloaded. ``NEURODIAG_NATIVE=0``
switches the kernels off; any failure (no compiler, a read-only cache, a failed load) leaves the
PyTorch kernels in use, with the reason in :func:`status`.

What is loaded, exactly: only a file this user could have written. The cache folder and the
library must be owned by this user and writable by nobody else (a planted ``.so`` in a shared
folder would run its constructor as the user), else one warning line and the library is built
in a fresh private temporary folder instead. The library's bytes are re-hashed against its name
before ``dlopen``, so a truncated or altered file (a bus error inside ``dlopen``) is never
loaded: it is removed and rebuilt.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["Kernels", "kernels", "status"]

SOURCE = Path(__file__).with_name("bernstein_kernel.c")
_AVX_FLAGS = ["-mavx2", "-mfma"]
_BUILD_TIMEOUT_S = 120

_failure: str | None = None
_lock = threading.Lock()


class Kernels:
    """The four C entry points with their ctypes signatures (pointers as integers)."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
        lib.bern_lanes.restype = i32
        self.lanes: int = lib.bern_lanes()  # the table's columns are padded to a multiple
        self.path = path
        self.table = lib.bern_table
        self.table.argtypes = [p, p, i64, i64, i32, f32, p, p]
        self.value = lib.bern_value
        self.value.argtypes = [p, p, i64, i64, i64, p, i64, i32, f32, f32]
        self.backward = lib.bern_backward
        self.backward.argtypes = [p, p, p, p, i64, i64, i64, p, i64, i32, f32, f32]
        self.grads = lib.bern_grads
        self.grads.argtypes = [p, p, i64, i64, i32, p, p, p]
        for fn in (self.table, self.value, self.backward, self.grads):
            fn.restype = None


def _compiler() -> str | None:
    named = os.environ.get("CC")
    if named:
        return shutil.which(named) or named
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _flags() -> list[str]:
    """-O3, plus AVX2/FMA code only where PyTorch detects AVX2 on this CPU (never an
    instruction the CPU lacks: the flags are part of the cache key)."""
    avx2 = platform.machine().lower() in ("x86_64", "amd64") and (
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    )
    base = ["-O3", "-std=gnu99", "-shared", "-fPIC"]
    return [*base, *_AVX_FLAGS] if avx2 else base


def _cache_dir() -> Path:
    return Path(os.environ.get("NEURODIAG_CACHE") or Path.home() / ".cache" / "neurodiag")


def _warn(message: str) -> None:
    print(f"neurodiag: warning: {message}", file=sys.stderr)


def _untrusted(st: os.stat_result) -> str | None:
    """Why a file or folder with this stat may hold something another user wrote, or None."""
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
    if os.name != "nt" and st.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _trusted_folder() -> Path:
    """The cache folder (created 0700), or a fresh private one when the cache is not safe."""
    folder = _cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        reason = _untrusted(folder.stat()) or (None if folder.is_dir() else "not a folder")
    except OSError as error:
        reason = f"it cannot be created ({error.strerror or error})"
    if reason is None:
        return folder
    private = Path(tempfile.mkdtemp(prefix="neurodiag-native-"))  # mode 0700, ours alone
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    _warn(f"not using the native-kernel cache {folder}: {reason}; building in {private}")
    return private


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _verified(path: Path) -> bool:
    """True when ``path`` is a regular file of this user's, writable by no one else, whose bytes
    hash to the digest in its name (checked before dlopen: a truncated library is a bus error)."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            reason = "it is not a regular file"
        elif (untrusted := _untrusted(st)) is not None:
            reason = untrusted
        elif _digest(path) != path.stem.rsplit("-", 1)[-1]:
            reason = "its bytes do not match the hash in its name (truncated or altered)"
        else:
            return True
    except OSError as error:
        reason = f"it cannot be read ({error.strerror or error})"
    _warn(f"not loading the cached native library {path}: {reason}; rebuilding it")
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def _stem(compiler: str, flags: list[str]) -> str:
    """The cache name before the content digest: what was compiled, how and with what."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode()]))
    return f"bernstein-{key.hexdigest()[:16]}"


def _build(compiler: str, flags: list[str]) -> Path:
    suffix = ".dll" if sys.platform == "win32" else ".so"
    stem = _stem(compiler, flags)
    folder = _trusted_folder()
    for cached in sorted(folder.glob(f"{stem}-*{suffix}")):
        if _verified(cached):
            return cached
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".build-", suffix=suffix)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *flags, "-o", tmp, str(SOURCE), "-lm"],
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{Path(compiler).name} failed: {last[:200]}")
        os.chmod(tmp, 0o700)  # the linker's mode follows the umask: 0775 would be refused
        target = folder / f"{stem}-{_digest(Path(tmp))}{suffix}"
        os.replace(tmp, target)  # atomic: concurrent builders never load a partial file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def kernels() -> Kernels | None:
    """The loaded kernels, or None (switched off, or the build or load failed: see status())."""
    global _failure
    if os.environ.get("NEURODIAG_NATIVE", "1").strip() == "0":
        _failure = "switched off by NEURODIAG_NATIVE=0"
        return None
    with _lock:
        try:
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C compiler found (set CC, or install cc/gcc/clang)")
            path = _build(compiler, _flags())
            try:
                return Kernels(ctypes.CDLL(str(path)), path)
            except (OSError, AttributeError) as error:  # not a library, or not ours
                _warn(f"cannot load the native library {path} ({error}); using PyTorch kernels")
                raise
        except Exception as error:  # any failure: the PyTorch kernels stay in use
            _failure = f"{type(error).__name__}: {error}"
            return None


def status() -> str:
    """One line: where the kernels were loaded from, or why they are not in use."""
    loaded = kernels()
    return f"native kernels: {loaded.path}" if loaded else f"native kernels off ({_failure})"
