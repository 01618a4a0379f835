"""Every test that starts a Ray cluster runs on one pytest-xdist worker, one after
the other: two clusters on one machine would compete for Ray's ports and CPUs."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.xdist_group("ray"))
