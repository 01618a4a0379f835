"""The whole suite's environment: what no test may touch outside its run."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from supervisor.environments.env_cache import ENV_CACHE_VAR

_MADE_HERE = "_APPVISOR_TEST_ENV_CACHE_MADE"


def pytest_configure(config: pytest.Config) -> None:
    """One environment cache for the run (its workers inherit it), not the user's:
    app environments, learned preloads and ``serve``'s head-start records that tests
    write would otherwise stay in ``~/.cache/appvisor/envs`` and steer the user's
    own ``serve``. A cache the caller names in ``APPVISOR_ENV_CACHE`` is kept."""
    if os.environ.get(ENV_CACHE_VAR):
        return
    os.environ[ENV_CACHE_VAR] = tempfile.mkdtemp(prefix="appvisor-test-envs-")
    os.environ[_MADE_HERE] = os.environ[ENV_CACHE_VAR]


def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller removes it
        return
    made = os.environ.pop(_MADE_HERE, None)
    if made is not None and os.environ.get(ENV_CACHE_VAR) == made:
        del os.environ[ENV_CACHE_VAR]
        shutil.rmtree(made, ignore_errors=True)
