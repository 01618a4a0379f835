"""Helpers for the Node.js apps' tests (a module of its own rather than
``conftest``, which other test directories also have).

Every test here needs a node the JavaScript child runtime supports; without one
the whole directory is skipped (conftest.py), with the reason. ``NodeChildDriver`` is the
child tests' ``ChildDriver`` (a real child spoken to through
``protocol.Connection("supervisor")``, which checks every message it sends)
started as ``node child/node/main.js`` with the descriptors the supervisor
gives it. The test apps' npm packages are installed once per session, into the
user's appvisor cache (shared by identical manifests, so the apps that share
``node_kitchen``'s manifest share one installation).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "tests" / "apps"
if importlib.util.find_spec("supervisor") is None:  # pragma: no cover - not installed
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "http"))  # http_helpers, for the serve tests

from supervisor.environments.node_runtime import MINIMUM_VERSION, parse_version  # noqa: E402
from supervisor.process.child_launch import node_command  # noqa: E402


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``predicate`` until it returns something true, and return that; fail after
    ``timeout`` seconds (a bound for a hang, far above what a loaded machine needs)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {predicate}"
        time.sleep(0.02)
    return value


def _node_problem() -> str | None:
    node = shutil.which("node")
    if node is None:
        return "node is not installed"
    if shutil.which("npm") is None:
        return "npm is not installed"
    version = parse_version(
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    )
    if version is None or version < MINIMUM_VERSION:
        return f"node {version} is older than the child runtime needs"
    return None


NODE_PROBLEM = _node_problem()


def _load_child_driver() -> Any:
    spec = importlib.util.spec_from_file_location(
        "child_tests_conftest", REPO / "tests" / "child" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_child_tests = _load_child_driver()
ChildDriver = _child_tests.ChildDriver


class NodeChildDriver(ChildDriver):  # type: ignore[misc, valid-type]
    """``ChildDriver`` over ``node child/node/main.js [APP_DIR]``."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
    ) -> None:
        out_read, out_write = os.pipe()
        fatal_read, fatal_write = os.pipe()
        capture_out_read, capture_out_write = os.pipe()
        capture_err_read, capture_err_write = os.pipe()
        argv = node_command(
            shutil.which("node") or "node",
            args[0] if args else None,
            out_write,
            capture_out_read,
            capture_err_read,
            fatal_write,
        )
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=capture_out_write,
            stderr=capture_err_write,
            pass_fds=(out_write, capture_out_read, capture_err_read, fatal_write),
            env=env,
            cwd=REPO,
        )
        theirs = (out_write, fatal_write, capture_out_read, capture_out_write)
        for fd in (*theirs, capture_err_read, capture_err_write):
            os.close(fd)
        proc.stdout = os.fdopen(out_read, "rb")
        proc.stderr = os.fdopen(fatal_read, "rb")
        self._start(proc, timeout)


SpawnNode = Callable[..., NodeChildDriver]
