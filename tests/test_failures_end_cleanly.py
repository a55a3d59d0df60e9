"""Issue 26: the reliability cases that a row of ``test_bad_input`` cannot hold — signals during
loading, treat's scan and save; a partial baseline left unwritten; a DataParallel model in
compare; a NaN loss named in the scan; a failing torchrun rank ending the job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neurodiag.cli import main

ROOT = Path(__file__).resolve().parent.parent

GOOD_MODEL = """
from torch import nn

def build_model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
"""

#: ``{marker}`` is touched where the signal should land; {before} runs before, {forward} in it.
SLOW = """
import time
from pathlib import Path
import torch
from torch import nn
{before}
class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.act = nn.ReLU()

    def forward(self, x):
        {forward}
        return self.act(self.fc(x))

def build_model():
    return Slow()

def slow_data():
    Path({marker!r}).touch()
    time.sleep(30)
    return [torch.randn(4, 4)]
"""

IN_IMPORT = "Path({marker!r}).touch(); time.sleep(30)"
IN_FORWARD = "Path({marker!r}).touch(); time.sleep(0.05)"


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _signalled(tmp: Path, where: str, sig: signal.Signals, args: list[str]) -> tuple[int, str]:
    """Run ``python -m neurodiag`` on the slow model, send ``sig`` once ``where`` is reached."""
    marker = tmp / "started"
    before = IN_IMPORT.format(marker=str(marker)) if where == "import" else ""
    forward = IN_FORWARD.format(marker=str(marker)) if where == "forward" else "pass"
    model = tmp / "slow.py"
    model.write_text(SLOW.format(before=before, forward=forward, marker=str(marker)))
    command = [sys.executable, "-m", "neurodiag", *[a.format(model=model) for a in args]]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp
    ) as process:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
    return process.returncode, err.decode()


TREAT = ["treat", "{model}", "-o", "new.pt", "--input-shape", "4", "--max-batches", "1000"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("where", "args", "sig", "code", "fragment"),
    [
        ("import", ["scan", "{model}"], signal.SIGTERM, 143, "terminated (SIGTERM) before"),
        ("import", ["scan", "{model}"], signal.SIGINT, 130, "interrupted before"),
        ("data", ["scan", "{model}", "-d", "{model}:slow_data"], signal.SIGTERM, 143, "SIGTERM"),
        ("forward", TREAT, signal.SIGTERM, 143, "terminated (SIGTERM) during the scan"),
        ("forward", TREAT, signal.SIGINT, 130, "interrupted during the scan"),
    ],
    ids=["sigterm-import", "sigint-import", "sigterm-data", "sigterm-treat", "sigint-treat"],
)
def test_a_signal_outside_scan_is_one_line_and_its_code(
    tmp_path: Path, where: str, args: list[str], sig: signal.Signals, code: int, fragment: str
) -> None:
    returncode, err = _signalled(tmp_path, where, sig, args)
    assert returncode == code, err
    assert fragment in _one_error_line(err)
    assert not (tmp_path / "new.pt").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_treats_save_keeps_the_file_whole_and_exits_143(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "good.py").write_text(GOOD_MODEL)
    real_save = torch.save

    def save_then_sigterm(obj: object, f: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # held back until the file is in place
        real_save(obj, f)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", save_then_sigterm)
    out_file = tmp_path / "new.pt"
    with pytest.raises(SystemExit) as info:
        main(["treat", str(tmp_path / "good.py"), "-o", str(out_file), "--input-shape", "4"])
    assert info.value.code == 143
    assert "SIGTERM" in _one_error_line(capsys.readouterr().err)
    assert torch.load(out_file, weights_only=True)  # complete: a state dict


def test_update_baseline_from_a_partial_scan_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.py").write_text(GOOD_MODEL)
    baseline = tmp_path / "base.json"
    with pytest.raises(SystemExit):
        main(["scan", str(tmp_path / "good.py"), "-f", "json", "-o", str(baseline)])
    before = baseline.read_bytes()
    capsys.readouterr()
    args = ["check", str(tmp_path / "good.py"), "--baseline", str(baseline), "--update-baseline"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--timeout", "0", "--input-shape", "4", "--max-batches", "50"])
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "partial" in line and "not written as a baseline" in line
    assert baseline.read_bytes() == before


def test_compare_unwraps_a_dataparallel_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dp.py").write_text(
        "from torch import nn\ndef build_model():\n"
        "    return nn.DataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["compare", str(tmp_path / "dp.py"), "-a", "gelu", "-f", "json"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    assert "Traceback" not in err and json.loads(out)


def test_scan_names_a_nan_loss_in_its_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.py").write_text(GOOD_MODEL)
    torch.save({"x": torch.randn(8, 4), "y": torch.full((8,), -100)}, tmp_path / "ignored.pt")
    with pytest.raises(SystemExit) as info:
        main(["scan", str(tmp_path / "good.py"), "-d", str(tmp_path / "ignored.pt"), "-f", "json"])
    assert info.value.code == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(note.startswith("the loss was NaN or infinite on 1 of 1") for note in notes), notes


RANK_RAISES = """
import os
from torch import nn

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.act = nn.ReLU()

    def forward(self, x):
        if os.environ.get("RANK") == "1":
            raise ValueError("boom on rank 1")
        return self.act(self.fc(x))

def build_model():
    return M()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP under torchrun")
def test_a_failing_torchrun_rank_ends_the_job(tmp_path: Path) -> None:
    """Rank 1's forward raises: the job ends within 60 s, non-zero, naming rank 1's error (it
    used to hang: rank 1 in the exit barrier, rank 0 in the scan's all-reduce)."""
    (tmp_path / "rank_raises.py").write_text(RANK_RAISES)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "neurodiag", "scan", str(tmp_path / "rank_raises.py"), "--input-shape", "4",
        "--no-progress", "-f", "csv",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert time.monotonic() - started < 60
    assert done.returncode != 0
    named = [line for line in done.stderr.splitlines() if line.startswith("error: rank 1 of 2")]
    assert named and "boom on rank 1" in named[0], done.stderr
    assert not [
        line for line in done.stderr.splitlines() if "rank_raises" in line and "pid" in line
    ]
