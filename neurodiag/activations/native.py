"""The fused CPU kernels of :mod:`bernstein_kernel.c`, compiled on first use and loaded with ctypes.

Why: eagerly, PyTorch makes one pass over the tensor per op, ~70 for a degree-9 Bernstein
forward+backward, and on small inputs each pass costs its dispatch; the C kernels make one
pass each way (measured in ``benchmarks/overhead.py --models d``).

What is executed, exactly: the C compiler named by ``$CC``, else the first of ``cc``, ``gcc``,
``clang`` on ``PATH``, on the one C file shipped in this package (no other input), with
``-O3 -shared -fPIC`` plus ``-mavx2 -mfma`` where PyTorch itself detects AVX2 on this CPU. The
library is written atomically to ``$NEURODIAG_CACHE`` (default ``~/.cache/neurodiag``) under a
name hashing the source, the compiler and the flags, and reused from there. Nothing is
downloaded. ``NEURODIAG_NATIVE=0`` switches the kernels off; any failure (no compiler, a
read-only cache, a failed load) leaves the PyTorch kernels in use, with the reason in
:func:`status`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
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


def _build(compiler: str, flags: list[str]) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode()]))
    suffix = ".dll" if sys.platform == "win32" else ".so"
    target = _cache_dir() / f"bernstein-{key.hexdigest()[:16]}{suffix}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=suffix)
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
            return Kernels(ctypes.CDLL(str(path)), path)
        except Exception as error:  # any failure: the PyTorch kernels stay in use
            _failure = f"{type(error).__name__}: {error}"
            return None


def status() -> str:
    """One line: where the kernels were loaded from, or why they are not in use."""
    loaded = kernels()
    return f"native kernels: {loaded.path}" if loaded else f"native kernels off ({_failure})"
