"""The standby: a spare child with the app loaded, which the next start sets up."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from sup_helpers import make_supervisor, wait_for

from supervisor import App
from supervisor.errors import ChildCrashedError

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

APP = Path(__file__).resolve().parent.parent / "apps" / "standby"


def status(app: App) -> dict[str, Any]:
    return dict(app.status()["replicas"][0])


async def standby_pid(app: App, other_than: int | None = None) -> int:
    """The pid of the app's standby, once one is loaded (and differs from ``other_than``)."""
    await wait_for(lambda: status(app)["standby_pid"] not in (None, other_than))
    return int(status(app)["standby_pid"])


async def test_a_restart_sets_up_the_standby(wait_gone: Any) -> None:
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP, standby=True)
        first = await app.run({})
        spare = await standby_pid(app)
        assert spare != first["pid"]
        # Nothing waits for a standby: it pays first-use costs before its hello.
        assert "--prewarm" in psutil.Process(spare).cmdline()
        assert "--prewarm" not in psutil.Process(first["pid"]).cmdline()
        killed_at = time.time()
        os.kill(first["pid"], signal.SIGKILL)
        await wait_for(lambda: app.status()["state"] == "ready" and status(app)["pid"] == spare)
        out = await app.run({})
        assert out["pid"] == spare
        assert out["setups"] == 1
        assert out["imported_at"] < killed_at < out["set_up_at"]  # loaded before, set up after
        assert app.status()["restarts"] == 1
        assert wait_gone([first["pid"]], zombie_ok=False) == []
        # And the replica loads a new one for the next restart.
        await standby_pid(app, other_than=spare)


async def test_a_config_change_sets_up_the_standby_with_the_new_config() -> None:
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP, standby=True)
        first = await app.run({})
        assert first["greeting"] == "hello"
        spare = await standby_pid(app)
        out = await app.run({}, setup={"greeting": "hi there"})
        assert (out["pid"], out["greeting"], out["setups"]) == (spare, "hi there", 1)


async def test_stopping_the_app_ends_its_standby(wait_gone: Any) -> None:
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP, standby=True)
        spare = await standby_pid(app)
        await app.stop()
        assert wait_gone([spare], zombie_ok=False) == []
        assert status(app)["standby_pid"] is None


async def test_eviction_ends_the_standby_too(wait_gone: Any) -> None:
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP, standby=True)
        first = await app.run({})
        spare = await standby_pid(app)
        assert await app.replicas[0].evict("memory pressure")
        assert wait_gone([first["pid"], spare], zombie_ok=False) == []
        assert app.status()["state"] == "unloaded"
        assert status(app)["standby_pid"] is None
        # The next request starts the app again, and a new standby follows.
        again = await app.run({})
        assert again["pid"] not in (first["pid"], spare)
        await standby_pid(app)


async def test_a_standby_that_died_is_not_used(wait_gone: Any) -> None:
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP, standby=True)
        first = await app.run({})
        spare = await standby_pid(app)
        os.kill(spare, signal.SIGKILL)
        assert wait_gone([spare], zombie_ok=False) == []
        assert app.status()["state"] == "ready"  # the serving child is not affected
        os.kill(first["pid"], signal.SIGKILL)
        await wait_for(
            lambda: (
                app.status()["state"] == "ready"
                and status(app)["pid"] not in (None, first["pid"], spare)
            )
        )
        out = await app.run({})
        assert out["pid"] not in (first["pid"], spare)
        assert out["setups"] == 1
        assert app.status()["restarts"] == 1  # the dead standby was not tried first


async def test_a_standby_that_dies_is_replaced_once_per_start(
    wait_gone: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="supervisor.app")
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP, standby=True)
        first = await standby_pid(app)
        os.kill(first, signal.SIGKILL)
        second = await standby_pid(app, other_than=first)
        assert f"standby pid {first} died" in caplog.text
        os.kill(second, signal.SIGKILL)
        assert wait_gone([first, second], zombie_ok=False) == []
        await wait_for(lambda: f"standby pid {second} died" in caplog.text)
        await anyio.sleep(0.5)  # long enough for a replacement to load, were one started
        assert status(app)["standby_pid"] is None
        assert (await app.run({}))["setups"] == 1  # the serving child never noticed


async def test_a_standby_that_cannot_load_is_reported_and_the_app_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refuse = tmp_path / "refuse"
    caplog.set_level(logging.WARNING, logger="supervisor.app")
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP, standby=True, env={"STANDBY_REFUSE_IMPORT": str(refuse)})
        refuse.touch()  # from now on the app's import fails: the standby's load will
        await wait_for(lambda: any("no standby" in r.getMessage() for r in caplog.records))
        assert "import refused" in caplog.text
        assert status(app)["standby_pid"] is None
        assert (await app.run({}))["setups"] == 1


async def test_an_app_that_failed_keeps_no_standby(wait_gone: Any) -> None:
    async with make_supervisor(pool_size=0) as sup:  # gives up after 2 restarts
        app = await sup.start(APP, standby=True)
        spares = []
        while app.status()["state"] != "failed":
            spares.append(await standby_pid(app, other_than=spares[-1] if spares else None))
            with pytest.raises(ChildCrashedError):
                await app.run({"crash": True})
            await wait_for(lambda: app.status()["state"] in ("ready", "failed"))
        assert len(spares) == 3
        await wait_for(lambda: status(app)["standby_pid"] is None)
        assert wait_gone(spares, zombie_ok=False) == []


async def test_without_standby_no_spare_child_is_kept() -> None:
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP)
        await app.run({})
        await anyio.sleep(0.5)
        assert status(app)["standby_pid"] is None
