"""Settings for the whole test session (here, not in tests/: a conftest.py there
would put tests/ on sys.path, where tests/protocol and tests/child would shadow
the real packages)."""

from __future__ import annotations

import os

import pytest


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Two pytest-xdist workers per core for ``-n auto``: most tests wait on a child
    (its start, a grace period, a gate) rather than compute, and with one worker per
    core the suite left the cores idle about a quarter of the time."""
    return 2 * len(os.sched_getaffinity(0))
