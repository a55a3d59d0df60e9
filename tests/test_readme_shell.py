"""README.md's shell blocks pasted into a real ``bash``, as a new user in a fresh clone would.

test_doc_commands runs the same ``neurodiag`` commands in-process (CliRunner), where a command the
shell would not find still passes. Here one bash session runs every block in order, from a
scratch folder holding the sample models and this repository's ``.venv``, with a PATH that does
not hold the venv: ``neurodiag`` is found only if the set-up line activated the venv (or a
command names ``.venv/bin/neurodiag``). Issue 26: the set-up line used ``.venv/bin/...`` and every
later ``neurodiag`` was "command not found".

Kept fast: the set-up's slow parts (``python3 -m venv``, ``pip install``) only have their program
looked up; the first ``neurodiag`` command runs for real (``--max-batches 2 --no-progress``), every
later one is looked up where bash would look it up (test_doc_commands runs them all, in-process);
other programs (ruff, mypy, pytest) are looked up, not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV = ROOT / ".venv"
_BLOCK = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.DOTALL)
_NEURODIAG = (["neurodiag"], [".venv/bin/neurodiag"], ["python", "-m", "neurodiag"])
_ACTIVATE = (". .venv/bin/activate", "source .venv/bin/activate")


def _lines(block: str) -> list[str]:
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            found.append(line.strip())
    return found


def _part(part: str, expected: int, run: bool) -> tuple[str, int | None]:
    """One ``&&``-separated command as bash should run it, and its expected exit code (None:
    only looked up); ``run``: a ``neurodiag`` command runs for real, else it is looked up."""
    text = part.strip()
    if text in _ACTIVATE:
        return text, None
    words = shlex.split(text, comments=True)
    if run and any(words[: len(p)] == p for p in _NEURODIAG):
        extra = ["--no-progress"] + ([] if "--max-batches" in words else ["--max-batches", "2"])
        return shlex.join([*words, *extra]), expected
    # slow or out of scope (venv creation, pip, ruff, mypy, pytest): the program must be found
    return f"command -v {shlex.quote(words[0])} >/dev/null", None


def _script(lines: list[str]) -> tuple[str, list[tuple[str, int]]]:
    """A bash script running ``lines`` in one session, and (command, expected code) per check.

    The first line's parts run in the session itself (so its ``activate`` lasts), every later
    line in a subshell; each part is followed by ``echo`` of its exit code into fd 3, and a
    failing part ends its line, as ``&&`` would."""
    body = ["exec 3>&1 1>/dev/null 2>stderr.txt"]
    checks: list[tuple[str, int]] = []
    for line in lines:
        expected = 1 if re.search(r"#\s*exit 1\b", line) else 0
        steps = []
        for part in line.split("&&"):
            first = not any(w in c for c, _ in checks for w in ("neurodiag ", "neurodiag'"))
            command, code = _part(part, expected, run=first)
            steps.append(f"{{ {command}; }}; rc=$?; echo {len(checks)} $rc >&3")
            checks.append((command, 0 if code is None else code))
            steps.append(f"[ $rc -eq {0 if code is None else code} ] || continue")
        loop = "for _ in 1; do " + "; ".join(steps) + "; done"
        # only the first (set-up) line's state lasts: the tests' set-up line must not
        # activate the venv for the commands after it
        body.append(loop if not body[1:] else f"( {loop} )")
    return "\n".join(body) + "\n", checks


def _fresh_path() -> str:
    """The caller's PATH less anything inside this repository's venv (pytest may run in it)."""
    keep = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry and not Path(entry).resolve().is_relative_to(VENV.resolve()):
            keep.append(entry)
    return os.pathsep.join(keep)


README_LINES = [
    line for block in _BLOCK.findall(README.read_text("utf-8")) for line in _lines(block)
]


def test_the_first_block_is_the_set_up_and_leaves_neurodiag_runnable() -> None:
    first = [part.strip() for part in README_LINES[0].split("&&")]
    assert first[0] == "python3 -m venv .venv", "the README's first shell block sets up the venv"
    install = next(i for i, part in enumerate(first) if "pip install" in part)
    activated = any(part in _ACTIVATE for part in first[:install])
    if activated:  # pip and everything after it are the venv's
        assert first[install].startswith("pip install")
    else:  # without activation every later command must name the venv's programs
        for line in README_LINES[1:]:
            for part in line.split("&&"):
                word = shlex.split(part, comments=True)[0]
                assert word.startswith(".venv/bin/") or word == "python3", line


@pytest.mark.skipif(shutil.which("bash") is None or not (VENV / "bin").is_dir(), reason="no bash")
def test_readme_shell_blocks_run_in_bash(tmp_path: Path) -> None:
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models")
    (tmp_path / ".venv").symlink_to(VENV)
    script, checks = _script(README_LINES)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH=_fresh_path(), COLUMNS="100")
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    codes = dict(line.split() for line in done.stdout.splitlines())
    stderr = (tmp_path / "stderr.txt").read_text(errors="replace")[-3000:]
    for i, (command, expected) in enumerate(checks):
        got = codes.get(str(i))
        assert got is not None, f"not reached: {command}\n{stderr}"
        assert int(got) == expected, f"exit {got} (127: not found): {command}\n{stderr}"
    assert len(checks) >= 15
