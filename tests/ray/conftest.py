"""The Ray tests come first in the session.

``--dist loadfile`` (pyproject.toml) runs each test file on one pytest-xdist
worker, so the tests that start Ray clusters (all in test_ray_cluster.py) run
one after the other: two clusters on one machine would compete for Ray's ports
and CPUs. Their chain is the longest of the suite, so it starts first and runs
beside the rest instead of after it (``--no-loadscope-reorder`` keeps this order).
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ray = [item for item in items if item.get_closest_marker("ray") is not None]
    items[:] = ray + [item for item in items if item.get_closest_marker("ray") is None]
