"""SIGTERM and SIGINT through the real entry point: the partial report, then 143 / 130."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

SLOW_MODEL = """
import time
from pathlib import Path
import torch
from torch import nn

class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.act = nn.ReLU()

    def forward(self, x):
        Path({marker!r}).touch()  # the scan is under way
        time.sleep(0.05)
        return self.act(self.fc(x)).sum(1)

def build_model():
    return Slow()
"""

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_prints_the_partial_report_and_exits(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    marker = tmp_path / "started"
    model = tmp_path / "slow.py"
    model.write_text(SLOW_MODEL.format(marker=str(marker)))
    args = [sys.executable, "-m", "neurodiag", "scan", str(model), "--input-shape", "4"]
    args += ["--max-batches", "100000", "--batch-size", "2", "-f", "csv", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen(
        [*args, "-d", "synthetic"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as process:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)  # a few batches in
        process.send_signal(sig)
        out, err = process.communicate(timeout=60)
    assert process.returncode == code, err.decode()
    frame = pd.read_csv(io.StringIO(out.decode()))
    assert frame["partial"].all() and frame["site"].tolist() == ["act"]
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "partial" in lines[-1]
    assert "Traceback" not in err.decode()


#: Makes the first ``import torch`` take 20 s, so a signal sent at 1 s lands inside it whatever
#: the machine's speed (a warm page cache imports torch in well under a second).
SLOW_TORCH_IMPORT = """
import builtins, time
_import = builtins.__import__
def _slow(name, *args, **kwargs):
    if name == "torch" and not getattr(_slow, "done", False):
        _slow.done = True
        time.sleep(20)
    return _import(name, *args, **kwargs)
builtins.__import__ = _slow
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_while_importing_is_a_clean_130(tmp_path: Path) -> None:
    """Ctrl-C while the console script is still importing torch: exit 130, no traceback."""
    script = Path(sys.executable).parent / "neurodiag"
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    (tmp_path / "sitecustomize.py").write_text(SLOW_TORCH_IMPORT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    with subprocess.Popen(
        [str(script), "scan", "nothing.py"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        time.sleep(1.0)  # Python is up; torch is still importing (for 20 s)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    assert b"Traceback" not in err
