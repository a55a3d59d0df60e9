"""Shared pytest options and fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--overwrite-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current output instead of comparing against it",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``golden(text, ext)``: compare ``text`` with ``tests/golden/<test name>.<ext>``.

    Files are read and written byte for byte (no newline translation), so a stray ``\\r`` or a
    trailing space is a failure too. A missing file fails rather than being created silently:
    new golden files must be asked for with ``--overwrite-golden`` and then reviewed.
    """
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    overwrite = bool(request.config.getoption("--overwrite-golden"))

    def check(text: str, ext: str) -> None:
        path = GOLDEN_DIR / f"{name}.{ext}"
        if overwrite:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
            return
        if not path.exists():
            pytest.fail(f"no golden file {path}; run pytest with --overwrite-golden to create it")
        assert text == path.read_bytes().decode("utf-8"), f"output differs from {path}"

    return check
