"""Building and loading the package's C files (the Bernstein kernels, the statistics' folds).

Each file is compiled with ``$CC`` (else cc, gcc, clang), ``-O3`` (+ AVX2/FMA where PyTorch
detects it), written atomically to ``$NEURODIAG_CACHE`` (default ``~/.cache/neurodiag``, 0700)
under hashes of source, compiler, flags and bytes; nothing is downloaded. A library is loaded only
if folder and file are this user's, writable by nobody else (a planted ``.so`` runs as the user)
and hashing to their name. ``NEURODIAG_NATIVE=0`` switches every library off.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import itertools
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import torch

AVX_FLAGS = ["-mavx2", "-mfma"]
BUILD_TIMEOUT_S = 120
#: Elements per thread below which a kernel runs on the calling thread only.
PER_THREAD = 1 << 17

#: the worker pool per process id: a forked child has none of its parent's threads
_pools: dict[int, ThreadPoolExecutor] = {}


def switched_off() -> bool:
    """``NEURODIAG_NATIVE=0``: every C library stays unloaded (the PyTorch references run)."""
    return os.environ.get("NEURODIAG_NATIVE", "1").strip() == "0"


def compiler() -> str | None:
    if named := os.environ.get("CC"):
        return shutil.which(named) or named
    return next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)


def flags() -> list[str]:
    """-O3, plus AVX2/FMA only where PyTorch detects AVX2 (the flags are in the cache key)."""
    avx2 = platform.machine().lower() in ("x86_64", "amd64") and (
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    )
    base = ["-O3", "-std=gnu99", "-shared", "-fPIC"]
    return [*base, *AVX_FLAGS] if avx2 else base


def warn(message: str) -> None:
    print(f"neurodiag: warning: {message}", file=sys.stderr)


def untrusted(st: os.stat_result) -> str | None:
    """Why a file or folder with this stat may hold something another user wrote, or None."""
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
    if os.name != "nt" and st.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def trusted_folder() -> Path:
    """The cache folder (created 0700), or a fresh private one when the cache is not safe."""
    folder = Path(os.environ.get("NEURODIAG_CACHE") or Path.home() / ".cache" / "neurodiag")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        reason = untrusted(folder.stat()) or (None if folder.is_dir() else "not a folder")
    except OSError as error:
        reason = f"it cannot be created ({error.strerror or error})"
    if reason is None:
        return folder
    private = Path(tempfile.mkdtemp(prefix="neurodiag-native-"))  # mode 0700, ours alone
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    warn(f"not using the native-kernel cache {folder}: {reason}; building in {private}")
    return private


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def verified(path: Path) -> bool:
    """``path`` is this user's regular file, writable by no one else, hashing to its name."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            reason = "it is not a regular file"
        elif (why := untrusted(st)) is not None:
            reason = why
        elif digest(path) != path.stem.rsplit("-", 1)[-1]:
            reason = "its bytes do not match the hash in its name (truncated or altered)"
        else:
            return True
    except OSError as error:
        reason = f"it cannot be read ({error.strerror or error})"
    warn(f"not loading the cached native library {path}: {reason}; rebuilding it")
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def stem(source: Path, prefix: str, cc: str, cc_flags: list[str]) -> str:
    """The cache name before the content digest: what was compiled, how and with what."""
    parts = [source.read_bytes(), cc.encode(), " ".join(cc_flags).encode()]
    key = hashlib.sha256(b"\0".join(parts))
    return f"{prefix}-{key.hexdigest()[:16]}"


def build(source: Path, prefix: str, cc: str, cc_flags: list[str]) -> Path:
    """The verified cached library of ``source``, compiled first when there is none."""
    suffix = ".dll" if sys.platform == "win32" else ".so"
    name = stem(source, prefix, cc, cc_flags)
    folder = trusted_folder()
    for cached in sorted(folder.glob(f"{name}-*{suffix}")):
        if verified(cached):
            return cached
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".build-", suffix=suffix)
    os.close(fd)
    try:
        command = [cc, *cc_flags, "-o", tmp, str(source), "-lm"]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{Path(cc).name} failed: {last[:200]}")
        os.chmod(tmp, 0o700)  # the linker's mode follows the umask: 0775 would be refused
        target = folder / f"{name}-{digest(Path(tmp))}{suffix}"
        os.replace(tmp, target)  # atomic: concurrent builders never load a partial file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(source: Path, prefix: str, extra_flags: tuple[str, ...] = ()) -> tuple[ctypes.CDLL, Path]:
    """Build (or find in the cache) and load ``source``; raises with the reason on failure."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install cc/gcc/clang)")
    path = build(source, prefix, cc, [*flags(), *extra_flags])
    try:
        return ctypes.CDLL(str(path)), path
    except OSError as error:  # not a library, or not ours
        warn(f"cannot load the native library {path} ({error}); using the reference")
        raise


def parts(a: int, numel: int) -> list[tuple[int, int]]:
    """Ranges of a leading dim of ``a`` rows, one per intra-op thread on large inputs."""
    count = max(1, min(torch.get_num_threads(), a, numel // PER_THREAD))
    return list(itertools.pairwise(a * k // count for k in range(count + 1)))


def map_parts(run: Callable[[int, int, int], None], ranges: list[tuple[int, int]]) -> None:
    """run(k, lo, hi) per range, all but the first on a shared pool (ctypes releases the GIL)."""
    futures = []
    if len(ranges) > 1:
        pool = _pools.get(os.getpid())
        if pool is None:  # first use in this process (a fork's copy would never run its work)
            pool = _pools[os.getpid()] = ThreadPoolExecutor(thread_name_prefix="neurodiag-native")
        futures = [pool.submit(run, k, *part) for k, part in enumerate(ranges) if k]
    run(0, *ranges[0])
    for future in futures:
        future.result()


class Bound(Protocol):
    """A loaded library's typed entry points, and where the library was loaded from."""

    path: Path


K = TypeVar("K", bound=Bound)


class NativeLibrary(Generic[K]):
    """One C file of the package, built and loaded on first call (once, thread-safe).

    Calling it returns ``bind(library, path)`` (the entry points with their ctypes types), or
    None when switched off or when the build or load failed; ``failure`` then says why.
    """

    def __init__(
        self,
        source: Path,
        prefix: str,
        bind: Callable[[ctypes.CDLL, Path], K],
        extra_flags: tuple[str, ...] = (),
    ) -> None:
        self.source, self.prefix, self.bind, self.extra_flags = source, prefix, bind, extra_flags
        self.failure: str | None = None
        self._loaded: K | None = None
        self._tried = False
        self._lock = threading.Lock()

    def __call__(self) -> K | None:
        if not self._tried:
            with self._lock:
                if not self._tried:
                    self._loaded = self._load()
                    self._tried = True
        return self._loaded

    def _load(self) -> K | None:
        if switched_off():
            self.failure = "switched off by NEURODIAG_NATIVE=0"
            return None
        try:
            return self.bind(*load(self.source, self.prefix, self.extra_flags))
        except Exception as error:  # any failure: the PyTorch code stays in use
            self.failure = f"{type(error).__name__}: {error}"
            return None

    def cache_clear(self) -> None:
        """Forget the result: the next call builds or loads again (tests, a changed cache)."""
        with self._lock:
            self._tried, self._loaded, self.failure = False, None, None

    def status(self, what: str) -> str:
        """One line: where ``what`` was loaded from, or why it is not in use."""
        loaded = self()
        return f"{what}: {loaded.path}" if loaded else f"{what} off ({self.failure})"
