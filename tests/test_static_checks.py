"""The linter and the type checker, run as tests with the settings in pyproject.toml.

As tests they run on a worker beside the rest of the suite instead of before it:
the suite waits on its processes a good part of the time, and mypy from a cold
cache takes about 20 s of a 2-core machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow
"""Started first, with the other slow files."""


@pytest.mark.parametrize("command", [["ruff", "check", "."], ["mypy"]], ids=["ruff", "mypy"])
def test_the_tree_passes(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
