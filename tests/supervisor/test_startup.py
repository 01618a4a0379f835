"""``Startup``: apps started in order in the background, their states meanwhile."""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest

from supervisor import errors as E
from supervisor.core.app import App
from supervisor.core.startup import AppStart, Startup

pytestmark = pytest.mark.anyio


class FakeApp:
    def __init__(self, state: str, available: bool) -> None:
        self._status = {"state": state, "available": available}

    def status(self) -> dict[str, Any]:
        return self._status


async def test_states_go_from_pending_through_the_replicas_state_to_ready() -> None:
    gate = anyio.Event()
    first = cast(App, FakeApp("ready", True))
    starting = {
        "b": cast(App, FakeApp("setting_up", False)),
        "c": cast(App, FakeApp("unloaded", False)),
    }

    async def start_a() -> App:
        await gate.wait()
        return first

    async def start_b() -> App:
        return cast(App, FakeApp("ready", True))

    startup = Startup(
        [AppStart("a", start_a), AppStart("b", start_b), AppStart("c", start_b)],
        starting=lambda n: starting.get(n),
    )
    assert startup.states() == {
        "a": {"state": "pending", "available": False},
        "b": {"state": "setting_up", "available": False},
        "c": {"state": "starting", "available": False},  # registered, nothing spawned yet
    }
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(startup.run)
        assert await startup.wait_for("a", 0.05) is None  # bounded: gives up
        gate.set()
        assert await startup.wait_for("a", 5) is first
    assert startup.finished.is_set()
    assert set(startup.apps) == {"a", "b", "c"}
    assert startup.state("a") == {"state": "ready", "available": True}


async def test_the_first_failure_stops_the_start_and_is_reported() -> None:
    reported: list[tuple[str, E.SupervisorError]] = []
    tried: list[str] = []

    async def fails() -> App:
        tried.append("a")
        raise E.SetupFailedError("boom")

    async def never() -> App:
        tried.append("b")
        raise AssertionError("not tried after a failure")

    startup = Startup(
        [AppStart("a", fails), AppStart("b", never)],
        on_failure=lambda name, error: reported.append((name, error)),
    )
    await startup.run()
    assert tried == ["a"]
    assert [(name, error.type) for name, error in reported] == [("a", "setup_failed")]
    assert startup.state("a")["state"] == "failed"
    assert startup.state("a")["error"] == {"type": "setup_failed", "message": "boom"}
    assert startup.state("b") == {"state": "pending", "available": False}
    # Nobody waits forever for an app that will not start.
    assert await startup.wait_for("b", 5) is None
