"""Every command pasted in README.md and docs/*.md, so none goes stale.

README's commands run as a new user runs them (through the CLI, from a scratch folder holding
the sample models), with the exit code their comment states (`# exit 1`, else 0), and
``--max-batches 2`` added so that the suite stays fast. The docs'
commands (minutes of training among them) are parsed by the CLI itself: a renamed option, a
removed choice or a bad value fails here. Not run by design: synopses (``[--option ...]``),
set-up commands (``pip install``; CI runs the README's test command itself), and anything but
``neurodiag``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from neurodiag.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.DOTALL)
_PREFIXES = (["neurodiag"], [".venv/bin/neurodiag"], ["python", "-m", "neurodiag"])


def _commands(page: Path) -> list[tuple[list[str], int]]:
    """(arguments after ``neurodiag``, expected exit code) per pasted neurodiag command."""
    found = []
    for block in _BLOCK.findall(page.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            code = 1 if re.search(r"#\s*exit 1\b", line) else 0
            for part in line.split("&&"):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:
                    continue
                for prefix in _PREFIXES:
                    if words[: len(prefix)] == prefix:
                        args = words[len(prefix) :]
                        if args and not any(w.startswith("[") or w == "MODEL" for w in args):
                            found.append((args, code))
    return found


README_COMMANDS = _commands(ROOT / "README.md")
DOC_COMMANDS = [(page.name, args) for page in PAGES[1:] for args, _ in _commands(page)]


def test_the_pages_paste_commands() -> None:
    assert len(README_COMMANDS) >= 10 and len(DOC_COMMANDS) >= 10


@pytest.fixture()
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "code"), README_COMMANDS, ids=[" ".join(a) for a, _ in README_COMMANDS]
)
def test_readme_command_runs(scratch: Path, args: list[str], code: int) -> None:
    extra = ["--no-progress"] + ([] if "--max-batches" in args else ["--max-batches", "2"])
    result = CliRunner().invoke(app, [*args, *extra], env={"COLUMNS": "100"})
    assert result.exit_code == code, result.stderr or result.stdout[-2000:]


@pytest.mark.parametrize(
    ("page", "args"), DOC_COMMANDS, ids=[f"{p}: {' '.join(a)}" for p, a in DOC_COMMANDS]
)
def test_doc_command_parses(page: str, args: list[str]) -> None:
    group = typer.main.get_command(app)
    name, *rest = args
    command = group.commands[name]  # type: ignore[attr-defined]
    with command.make_context(name, rest) as ctx:  # parses and validates every option
        assert ctx.params
