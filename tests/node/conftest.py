"""Fixtures for the Node.js apps' tests; the helpers are in node_helpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from node_helpers import APPS, NODE_PROBLEM, NodeChildDriver

from supervisor.environments.app_config import open_app_dir
from supervisor.environments.environment import child_environment
from supervisor.environments.node_runtime import prepare_node_app


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if NODE_PROBLEM is None:
        return
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.skip(reason=NODE_PROBLEM))


@pytest.fixture(scope="session")
def kitchen_env() -> dict[str, str]:
    """The environment a kitchen child gets: the allowlist and its packages' directory."""
    if NODE_PROBLEM is not None:
        pytest.skip(NODE_PROBLEM)
    directory, manifest = open_app_dir(APPS / "node_kitchen")
    node = prepare_node_app(directory, manifest)
    return {**child_environment({}, cuda_visible_devices=""), **node.env}


@pytest.fixture
def spawn_node(kitchen_env: dict[str, str]) -> Iterator[Callable[..., NodeChildDriver]]:
    """``spawn_node(*args, env=None)`` starts a node child; all are killed at teardown."""
    drivers: list[NodeChildDriver] = []

    def start(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> NodeChildDriver:
        driver = NodeChildDriver(*args, env=kitchen_env if env is None else env, **kwargs)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.close()
