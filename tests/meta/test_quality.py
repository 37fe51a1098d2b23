"""Lint, format and type checks run as tests, so `bash .ci/run` (the README's test command) enforces them.

Each check is skipped, with the reason, where its tool is not installed (the ``dev`` extra has
all three). ``mypy`` reads its configuration from ``pyproject.toml``: strict on the library
(``mi_losses`` without ``mi_losses.apps``), non-strict on the applications.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tool: str, *args: str, timeout: float = 900) -> None:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [sys.executable, "-m", tool, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{tool} {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_ruff_check() -> None:
    _run("ruff", "check", ".")


def test_ruff_format() -> None:
    _run("ruff", "format", "--check", ".")


@pytest.mark.slow
def test_mypy_strict_on_the_library() -> None:
    _run("mypy")
