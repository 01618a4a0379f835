"""Fixtures for the HTTP tests: two real servers shared by the whole session.

One serves the README's ``hello`` app alone, without auth; the other serves
several apps with a token, an allowed directory for local input paths and a
per-app setup. Both are stopped with SIGTERM at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from http_helpers import APPS, EXAMPLES, TOKEN, Server, running


@pytest.fixture(scope="session")
def hello(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("hello-server") / "server.log"
    with running([str(EXAMPLES / "hello")], log=log) as server:
        yield server


@pytest.fixture(scope="session")
def allowed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="session")
def multi(tmp_path_factory: pytest.TempPathFactory, allowed_dir: Path) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("multi-server") / "server.log"
    args = [
        str(EXAMPLES / "hello"),
        str(APPS / "http_faults"),
        str(EXAMPLES / "image"),
        str(EXAMPLES / "stream"),
        "--auth-token",
        TOKEN,
        "--allow-path",
        str(allowed_dir),
        "--setup",
        'hello={"greeting": "Howdy"}',
        "--log-format",
        "json",
    ]
    with running(args, token=TOKEN, log=log) as server:
        yield server
