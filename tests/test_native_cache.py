"""Issue 26: the native-kernel cache never loads a library this user did not build (a planted
``.so`` in a shared or foreign folder, a truncated one), and never crashes on one."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurodiag import native_build
from neurodiag.activations import native
from neurodiag.activations.bernstein import Bernstein
from tests.test_bernstein import _randomise

ROOT = Path(__file__).resolve().parent.parent
PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(getenv("PLANTED_MARKER"), "w");
    if (f) { fputs("the planted constructor ran", f); fclose(f); }
}
"""

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX owners and modes"),
    pytest.mark.skipif(native_build.compiler() is None, reason="no C compiler"),
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.delenv("NEURODIAG_NATIVE", raising=False)
    native.kernels.cache_clear()
    yield
    native.kernels.cache_clear()  # the next caller loads the real cache again


def _expected_name(content: bytes) -> str:
    """The name the cache gives a library with ``content``, as an attacker could compute it."""
    compiler = native_build.compiler()
    assert compiler is not None
    digest = hashlib.sha256(content).hexdigest()[:16]
    stem = native_build.stem(native.SOURCE, "bernstein", compiler, native_build.flags())
    return f"{stem}-{digest}.so"


def _plant(folder: Path) -> Path:
    """A real shared library whose constructor writes $PLANTED_MARKER, under the cache name."""
    source = folder.parent / "planted.c"
    source.write_text(PLANTED_C)
    built = folder.parent / "planted.so"
    compiler = native_build.compiler()
    assert compiler is not None
    subprocess.run([compiler, "-shared", "-fPIC", "-o", built, source], check=True)
    planted = folder / _expected_name(built.read_bytes())
    shutil.move(built, planted)
    return planted


def _same_as_pytorch() -> None:
    """The kernels that were loaded give the PyTorch kernels' numbers (no no-op library)."""
    m = _randomise(Bernstein(9, num_features=5), seed=7)
    twin = Bernstein(9, num_features=5)
    twin.load_state_dict(m.state_dict())
    twin.native_kernel = False
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(2)) * 3
    assert m._native(x)  # the C kernels run
    y = m(x.requires_grad_())
    torch.testing.assert_close(y, twin(x))


def test_a_library_planted_in_a_world_writable_cache_is_never_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    marker = tmp_path / "marker"
    planted = _plant(shared)
    monkeypatch.setenv("NEURODIAG_CACHE", str(shared))
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    lib = native.kernels()
    assert lib is not None and lib.path.parent != shared
    assert lib.path.parent.stat().st_mode & 0o777 == 0o700  # the private fallback
    assert native.status() == f"native kernels: {lib.path}"
    assert not marker.exists() and planted.exists()
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        f"neurodiag: warning: not using the native-kernel cache {shared}: it is writable by "
        f"group or others (mode 777); building in {lib.path.parent}"
    ]
    _same_as_pytorch()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root: chown")
def test_a_cache_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    marker = tmp_path / "marker"
    _plant(theirs)
    os.chown(theirs, 65534, 65534)  # nobody
    monkeypatch.setenv("NEURODIAG_CACHE", str(theirs))
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    lib = native.kernels()
    assert lib is not None and lib.path.parent != theirs and not marker.exists()
    assert "it is owned by uid 65534, not by this user" in capfd.readouterr().err


def test_the_cache_folder_is_created_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "new" / "cache"
    monkeypatch.setenv("NEURODIAG_CACHE", str(cache))
    previous = os.umask(0o002)
    try:
        lib = native.kernels()
    finally:
        os.umask(previous)
    assert lib is not None and lib.path.parent == cache
    assert cache.stat().st_mode & 0o777 == 0o700
    assert lib.path.stat().st_mode & 0o022 == 0  # the library is not group-writable either


def test_a_truncated_cached_library_is_rebuilt_not_loaded(tmp_path: Path) -> None:
    """A half-written library would be a bus error inside dlopen (exit 135, no message): its
    hash is checked first, so it is one warning line, a rebuild and exit 0."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    env = {**os.environ, "NEURODIAG_CACHE": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("NEURODIAG_NATIVE", None)
    script = (
        "from neurodiag.activations import native; import sys; "
        "lib = native.kernels(); print(native.status()); "
        "sys.exit(0 if lib is not None else 3)"
    )
    run = [sys.executable, "-c", script]
    first = subprocess.run(run, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    (built,) = cache.iterdir()
    whole = built.read_bytes()
    built.write_bytes(whole[: len(whole) // 2])

    again = subprocess.run(run, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().splitlines() == [
        f"neurodiag: warning: not loading the cached native library {built}: its bytes do not "
        "match the hash in its name (truncated or altered); rebuilding it"
    ]
    (rebuilt,) = cache.iterdir()
    assert again.stdout.strip() == f"native kernels: {rebuilt}"
    assert rebuilt.name.endswith(f"-{hashlib.sha256(rebuilt.read_bytes()).hexdigest()[:16]}.so")


def test_a_writable_library_in_the_private_cache_is_removed_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    marker = tmp_path / "marker"
    planted = _plant(cache)
    planted.chmod(0o666)  # anyone could have swapped its bytes
    monkeypatch.setenv("NEURODIAG_CACHE", str(cache))
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    lib = native.kernels()
    assert lib is not None and lib.path.parent == cache and lib.path != planted
    assert not marker.exists() and not planted.exists()
    assert capfd.readouterr().err.strip().splitlines() == [
        f"neurodiag: warning: not loading the cached native library {planted}: it is writable "
        "by group or others (mode 666); rebuilding it"
    ]
    _same_as_pytorch()
