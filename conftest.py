"""Settings of the whole test suite (here, not in tests/, so that tests/ is not put on
sys.path, where its folders would shadow the packages they test)."""

from __future__ import annotations

import os

import pytest


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than there are cores.

    The suite waits on the children, servers and clusters it starts about a third
    of its time; on a 2-core machine three workers took 210 s where two took 252 s
    and four 226 s.
    """
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files marked ``slow`` (the Ray cluster's, over a minute) first: workers take
    whole files in order, and a long file taken last ends the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
