"""Shared fixtures for the supervisor's tests.

``no_leftover_processes`` checks, after a test, that the test process has no
child process left (no stray child, grandchild or zombie). Modules that start
real children opt in with ``pytestmark = pytest.mark.usefixtures(...)``.
``wait_gone`` polls until given pids have exited (a zombie counts as alive
for that purpose only if ``zombie_ok`` is false). ``fake_gpus(*totals_mib)``
writes a fake NVML file with those devices and points ``SUPERVISOR_FAKE_NVML``
at it (see the README's "The fake NVML backend"). ``scripted_app`` is an app of
one replica whose child is ``scripted_child``, a ``fake_child.ScriptedChild``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import psutil
import pytest
from fake_child import ScriptedChild, serving_app
from sup_helpers import FakeGpus, WaitGone, describe_process

from supervisor.core import replica as replica_module
from supervisor.core.app import App

if importlib.util.find_spec("supervisor") is None:  # pragma: no cover - not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def scripted_child(monkeypatch: pytest.MonkeyPatch) -> ScriptedChild:
    fake = ScriptedChild()
    monkeypatch.setattr(replica_module, "launch_child", fake.launch)
    return fake


@pytest.fixture
async def scripted_app(scripted_child: ScriptedChild, tmp_path: Path) -> AsyncIterator[App]:
    async with serving_app(tmp_path) as app:
        yield app


@pytest.fixture
def fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGpus:
    def write(*totals_mib: int) -> Path:
        path = tmp_path / "nvml.json"
        devices = [
            {"index": i, "name": f"Fake GPU {i}", "total_mib": total}
            for i, total in enumerate(totals_mib)
        ]
        path.write_text(json.dumps({"devices": devices, "processes": {}}))
        monkeypatch.setenv("SUPERVISOR_FAKE_NVML", str(path))
        return path

    return write


@pytest.fixture
def apps_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "apps"


def _status(pid: int) -> str | None:
    try:
        return str(psutil.Process(pid).status())
    except psutil.NoSuchProcess:
        return None


def _leftovers(before: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """Children (recursively) of this process that still exist, zombies included, but
    for those in ``before`` and what they started: a ``serve`` that a module-scoped
    fixture keeps running may replace its fork server while another test runs."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            lineage = {process.pid, *(parent.pid for parent in process.parents())}
            if not lineage & before and _status(process.pid) is not None:
                found.append(process)
    return found


def _wait_gone(pids: Iterable[int], timeout: float = 5.0, *, zombie_ok: bool = True) -> list[int]:
    """Poll until none of ``pids`` runs; return those still there when time ran out.

    With ``zombie_ok`` a zombie counts as gone: it runs nothing, and reaping an
    orphan is its new parent's (init's) business, not the supervisor's.
    """
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            status = _status(pid)
            if status is None or (zombie_ok and status == psutil.STATUS_ZOMBIE):
                continue
            alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture
def wait_gone() -> WaitGone:
    return _wait_gone


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a child process or a zombie behind (after a short poll)."""
    before = frozenset(p.pid for p in _leftovers())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        left = _leftovers(before)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    zombies = [p for p in left if _status(p.pid) == psutil.STATUS_ZOMBIE]
    assert not zombies, "zombie processes left: " + "; ".join(
        describe_process(p.pid) for p in zombies
    )
    assert not left, "processes left behind: " + "; ".join(describe_process(p.pid) for p in left)
