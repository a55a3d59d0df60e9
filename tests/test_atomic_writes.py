"""Issue 26: every file neurodiag writes is replaced atomically (an interrupted write leaves the
old file byte-identical and no temporary behind), and an output that names an input is one
line and exit 2 before any work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from neurodiag import atomic
from neurodiag.check import save_baseline
from neurodiag.cli import app
from neurodiag.errors import NeurodiagError
from tests.test_cli import SMALL_MLP

ROOT = Path(__file__).resolve().parent.parent
OLD = b"old content\x00 that must survive\n"
runner = CliRunner()


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.py"
    path.write_text(SMALL_MLP)
    return path


@pytest.fixture()
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "existing.csv"
    path.write_bytes(OLD)
    path.chmod(0o640)
    return path


def _only(folder: Path, *names: str) -> None:
    """No temporary file left beside the outputs."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


# --- the helper ----------------------------------------------------------------------------


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(
    old_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic.write_text(old_file, "new report\n" * 1000)
    assert old_file.read_bytes() == OLD
    _only(old_file.parent, old_file.name)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit, OSError])
def test_an_interrupt_mid_write_leaves_the_old_file_and_no_temporary(
    old_file: Path, stop: type[BaseException]
) -> None:
    """Ctrl-C (KeyboardInterrupt), SIGTERM (the CLI raises one too) or a failing write after
    half of the new bytes went out."""
    with pytest.raises(stop), atomic.replacing(old_file) as handle:
        handle.write(b"half of a new rep")
        handle.flush()
        raise stop()
    assert old_file.read_bytes() == OLD
    _only(old_file.parent, old_file.name)


def test_the_new_file_keeps_the_old_mode_else_follows_the_umask(
    old_file: Path, tmp_path: Path
) -> None:
    atomic.write_text(old_file, "new\n")
    assert old_file.read_text() == "new\n" and old_file.stat().st_mode & 0o777 == 0o640
    previous = os.umask(0o027)
    try:
        atomic.write_bytes(tmp_path / "fresh.bin", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "fresh.bin").stat().st_mode & 0o777 == 0o640  # 0666 & ~0027
    _only(tmp_path, old_file.name, "fresh.bin")


def test_a_symlink_is_followed_and_a_fifo_written_in_place(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    atomic.write_text(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic.write_text(fifo, "through the pipe\n")  # /dev/stdout, /dev/null alike
    reader.join(10)
    assert got == [b"through the pipe\n"] and fifo.is_fifo()


def test_a_failed_baseline_write_keeps_the_old_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neurodiag.report import Report
    from tests.fixtures.reports import report_row, sample_header

    baseline = tmp_path / "base.json"
    baseline.write_bytes(OLD)

    def size_limit(*_args: object) -> None:
        raise OSError(27, "File too large")

    monkeypatch.setattr(os, "replace", size_limit)
    with pytest.raises(NeurodiagError, match=r"cannot write baseline.*File too large"):
        save_baseline(Report(sample_header(), [report_row("0", "relu")]), baseline)
    assert baseline.read_bytes() == OLD
    _only(tmp_path, "base.json")


# --- outputs that name an input ------------------------------------------------------------


def _refused(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert err.strip().splitlines() == [expected]


def test_scan_output_onto_the_model_file_is_refused(model_file: Path) -> None:
    code, _, err = _invoke("scan", str(model_file), "-o", str(model_file), "--max-batches", "1")
    _refused(code, err, f"error: --output {model_file} is the model file; choose another path")
    assert model_file.read_text() == SMALL_MLP


def test_scan_output_and_plot_onto_the_data_file_are_refused(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data.pt"
    data.write_bytes(OLD)  # never read: refused before any loading
    monkeypatch.chdir(tmp_path)
    code, _, err = _invoke("scan", str(model_file), "--data", "data.pt", "--output", str(data))
    _refused(code, err, f"error: --output {data} is the --data file; choose another path")
    code, _, err = _invoke("scan", str(model_file), "--data", str(data), "--plot", "data.pt")
    _refused(code, err, "error: --plot data.pt is the --data file; choose another path")
    assert data.read_bytes() == OLD


def test_an_output_onto_the_file_a_data_config_names_is_refused(
    model_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "x.npy").write_bytes(OLD)
    config = tmp_path / "data.yaml"
    config.write_text("source: x.npy\nbatch_size: 4\n")
    out = tmp_path / "x.npy"
    code, _, err = _invoke("scan", str(model_file), "--data", str(config), "-o", str(out))
    _refused(
        code,
        err,
        f"error: --output {out} is the data file that {config} names; choose another path",
    )
    assert out.read_bytes() == OLD


def test_treat_output_onto_its_weights_is_refused(model_file: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck.pt"
    ckpt.write_bytes(OLD)
    code, _, err = _invoke("treat", str(model_file), "-w", str(ckpt), "-o", str(ckpt))
    _refused(code, err, f"error: --output {ckpt} is the --weights file; choose another path")
    assert ckpt.read_bytes() == OLD


def test_check_baseline_that_is_the_model_is_refused_its_own_baseline_is_not(
    model_file: Path, tmp_path: Path
) -> None:
    code, _, err = _invoke(
        "check", str(model_file), "--baseline", str(model_file), "--update-baseline"
    )
    _refused(code, err, f"error: --baseline {model_file} is the model file; choose another path")
    assert model_file.read_text() == SMALL_MLP

    baseline = tmp_path / "base.json"
    baseline.write_bytes(OLD)
    args = ["check", str(model_file), "--baseline", str(baseline), "--max-batches", "1"]
    code, _, err = _invoke(*args, "--update-baseline")
    assert code == 0, err
    assert baseline.read_bytes() != OLD and '"sites"' in baseline.read_text()
    _only(tmp_path, "mlp.py", "base.json")
    # a report written over the baseline being read is refused too
    code, _, err = _invoke(*args, "--junit-xml", str(baseline))
    _refused(
        code, err, f"error: --junit-xml {baseline} is the --baseline file; choose another path"
    )


def test_check_junit_xml_onto_the_output_is_refused(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.xml"
    code, _, err = _invoke("check", str(model_file), "-o", str(out), "--junit-xml", str(out))
    _refused(code, err, f"error: --junit-xml {out} is also --output; choose another path")


def test_an_unwritable_step_summary_is_one_warning_after_the_verdict(
    model_file: Path, tmp_path: Path
) -> None:
    """$GITHUB_STEP_SUMMARY is appended to by design; a folder there warns, the verdict stands."""
    code, _, err = _invoke(
        "check",
        str(model_file),
        "-f",
        "github",
        "--max-batches",
        "1",
        "--max-dead-pct",
        "100",
        env={"GITHUB_STEP_SUMMARY": str(tmp_path)},
    )
    assert code == 0, err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"warning: cannot append to $GITHUB_STEP_SUMMARY {tmp_path}")


# --- the real entry point under a file-size limit ------------------------------------------


@pytest.mark.skipif(not shutil.which("bash") or sys.platform == "win32", reason="needs ulimit")
def test_a_file_size_limit_leaves_the_old_report_byte_identical(
    model_file: Path, old_file: Path
) -> None:
    """``ulimit -f 0``: the write fails (EFBIG; CPython ignores SIGXFSZ) before the rename."""
    script = (
        f'ulimit -f 0; exec "{sys.executable}" -m neurodiag scan "{model_file}" '
        f'--max-batches 1 -f csv -o "{old_file}"'
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "NEURODIAG_NATIVE": "0"}
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: cannot write --output {str(old_file)!r}: File too large; choose a writable path"
    ]
    assert old_file.read_bytes() == OLD
    _only(old_file.parent, model_file.name, old_file.name)


def test_treat_writes_its_checkpoint_atomically(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint that cannot be put in place (here: the rename fails) keeps the old one."""
    out = tmp_path / "treated.pt"
    out.write_bytes(OLD)
    real_replace = os.replace

    def refuse_checkpoints(src: str, dst: str | os.PathLike[str]) -> None:
        if str(dst).endswith(".pt"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_checkpoints)
    code, _, err = _invoke("treat", str(model_file), "-o", str(out), "--max-batches", "1")
    assert code == 2 and "No space left on device" in err, err
    assert out.read_bytes() == OLD
    _only(tmp_path, "mlp.py", "treated.pt")
    monkeypatch.setattr(os, "replace", real_replace)
    code, _, err = _invoke("treat", str(model_file), "-o", str(out), "--max-batches", "1")
    assert code == 0, err
    assert isinstance(torch.load(out, weights_only=True), dict)
