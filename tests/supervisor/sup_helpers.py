"""Helpers shared by the supervisor's process-level tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import psutil

from supervisor import App, RestartPolicy, Supervisor
from supervisor.core.request import Request

T = TypeVar("T")

FakeGpus = Callable[..., Path]
WaitGone = Callable[..., list[int]]
"""The ``fake_gpus`` fixture (conftest.py): ``fake_gpus(*totals_mib)`` -> the NVML file."""


def describe_process(pid: int) -> str:
    """A process for a failure message: its state, parent, working directory and command."""
    try:
        proc = psutil.Process(pid)
        return (
            f"pid {proc.pid} ({proc.status()}, parent {proc.ppid()}, cwd {proc.cwd()}): "
            f"{' '.join(proc.cmdline())[:120]}"
        )
    except psutil.Error:
        return f"pid {pid} (gone)"


def make_supervisor(**overrides: Any) -> Supervisor:
    """A supervisor with short grace periods and a small restart budget, no GPUs.

    No pool (and so no fork server): a test starts the children it needs and no
    idle ones beside them, which would double the CPU a start costs on a 2-core CI
    machine. What a pooled or forked start changes is proven where a test asks for
    one (``test_pool.py``, ``test_fork_server.py``, ``pool_size=1`` below), and
    ``serve`` in the HTTP tests runs with the defaults.
    """
    options: dict[str, Any] = {
        "gpu_backend": None,
        "pool_size": 0,
        "cancel_grace": 0.5,
        "unload_timeout": 2.0,
        "restart_policy": RestartPolicy(max_restarts=2, window=30),
    }
    options.update(overrides)
    return Supervisor(**options)


async def outcome(request: Request) -> Any:
    """The output of a submitted request, or its error raised."""
    return (await request.result()).output


async def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something true, and return that; ``timeout``
    only bounds a hang, far above what a loaded machine needs."""
    with anyio.fail_after(timeout):
        while not (value := predicate()):
            await anyio.sleep(interval)
    return value


def only_pid(app: App) -> int:
    """The app's one child's pid (an app with one replica)."""
    pids = app.status()["pids"]
    assert len(pids) == 1, pids
    return int(pids[0])


def in_flight(app: App) -> int:
    return sum(r["in_flight"] for r in app.status()["replicas"])
