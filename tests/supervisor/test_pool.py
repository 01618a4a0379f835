"""The pre-started pool: a pooled child must be indistinguishable from a fresh one."""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from sup_helpers import FakeGpus

from supervisor import Supervisor
from supervisor.process import pool as pool_module
from supervisor.process.pool import PoolKey

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

APPS = Path(__file__).resolve().parent.parent / "apps"
INTROSPECT = APPS / "introspect"


def pool_children() -> list[str]:
    """This supervisor's fork servers and pooled children: its own children (a
    ``serve`` that another test keeps running has its own, one level down)."""
    found = []
    for process in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            command = " ".join(process.cmdline())
            if "child.fork_server" in command or command.endswith("-m child"):
                found.append(command)
    return found


async def pool_filled(sup: Supervisor, key: tuple[str, ...] = ()) -> None:
    with anyio.fail_after(30):
        while sup.pool.idle_count(key) < sup.pool.size:
            await anyio.sleep(0.02)


async def snapshot(sup: Supervisor, name: str, **options: Any) -> dict[str, Any]:
    app = await sup.start(INTROSPECT, name=name, **options)
    return dict(await app.run({}))


async def test_a_pooled_child_looks_exactly_like_a_fresh_one(fake_gpus: FakeGpus) -> None:
    fake_gpus(16384, 16384)
    options = {"gpus": [1], "env": {"APP_SETTING": "on"}}
    async with Supervisor(pool_size=0) as sup:
        fresh = await snapshot(sup, "fresh", **options)
    async with Supervisor(pool_size=1) as sup:
        await pool_filled(sup)
        pooled = await snapshot(sup, "pooled", **options)
        assert sup.pool.handed_out == 1  # it really came from the pool
    assert pooled["environ"] == fresh["environ"]
    assert pooled["environ"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert pooled["environ"]["APP_SETTING"] == "on"
    assert pooled["cwd"] == fresh["cwd"] == str(INTROSPECT)
    assert pooled["path0"] == fresh["path0"] == str(INTROSPECT)
    assert pooled["app_packages"] == fresh["app_packages"]
    # The runtime imported without the garbage collector; the app never runs without it.
    assert pooled["collecting"] == fresh["collecting"] == [True, True]
    # The one difference: only the pooled child paid first-use costs before it was needed.
    assert "child.prewarm" in pooled["modules"]
    assert "child.prewarm" not in fresh["modules"]


async def test_pooled_children_serve_one_app_each_and_share_nothing() -> None:
    async with Supervisor(pool_size=1) as sup:
        await pool_filled(sup)
        first = await snapshot(sup, "first")
        await pool_filled(sup)
        second = await snapshot(sup, "second")
        assert sup.pool.handed_out == 2
    assert first["pid"] != second["pid"]
    # Each child holds its own app's package and no other.
    assert len(first["app_packages"]) == len(second["app_packages"]) == 1


async def test_an_app_env_read_at_interpreter_start_gets_a_fresh_child() -> None:
    async with Supervisor(pool_size=1) as sup:
        await pool_filled(sup)
        out = await snapshot(sup, "unsafe", env={"PYTHONHASHSEED": "7"})
        assert sup.pool.handed_out == 0
    assert out["environ"]["PYTHONHASHSEED"] == "7"


@pytest.mark.parametrize("fork_server", [True, False], ids=["forked", "spawned"])
async def test_preloaded_modules_are_imported_before_the_app_asks(fork_server: bool) -> None:
    async with Supervisor(
        pool_size=1, pool_preload=("decimal", "fractions"), fork_server=fork_server
    ) as sup:
        await pool_filled(sup, ("decimal", "fractions"))
        out = await snapshot(sup, "preloaded")
        assert sup.pool.handed_out == 1
    assert {"decimal", "fractions"} <= set(out["modules"])
    # Preloaded without the garbage collector; the app runs with it.
    assert out["collecting"] == [True, True]


async def test_turning_the_pool_off_starts_no_spare_process() -> None:
    async with Supervisor(pool_size=0) as sup:
        await snapshot(sup, "alone")
        assert sup.pool.spawned == 0
        assert sup.status()["pool"]["idle"] == {}


async def test_a_refill_asked_for_while_the_pool_spawns_is_not_lost() -> None:
    """A start that wants another kind of child (another key) while the pool is
    still spawning its first one gets it once that spawn is over (the pool used to
    reset its wake-up after spawning, losing a request made meanwhile)."""
    async with Supervisor(gpu_backend=None, pool_size=1) as sup:
        other = PoolKey(sup.pool.default_key.python, ("json",))
        assert sup.pool.idle_count() == 0  # the first spawn is under way
        assert sup.pool.take(other) is None  # wanted from now on
        sup.pool.refill()
        with anyio.fail_after(30):
            while sup.pool.idle_count(("json",)) < 1:
                await anyio.sleep(0.02)


async def test_library_settings_get_children_started_with_them() -> None:
    """An app that sets a thread-pool size (read by a numerical library when the pool
    preloads it) is served by pooled children started with that value, once it has
    asked for one, instead of a fresh spawn at every start."""
    env = {"OMP_NUM_THREADS": "1"}
    settings = (("OMP_NUM_THREADS", "1"),)
    async with Supervisor(pool_size=1, pool_preload=("decimal",)) as sup:
        await pool_filled(sup, ("decimal",))
        first = await snapshot(sup, "first", env=env)
        assert sup.pool.handed_out == 0  # the default child was started without it
        with anyio.fail_after(30):
            while sup.pool.idle_count(("decimal",), settings) < 1:
                await anyio.sleep(0.02)
        second = await snapshot(sup, "second", env=env)
        assert sup.pool.handed_out == 1
        # What the interpreter (and a library loading in it) saw at its start:
        initial = await anyio.Path(f"/proc/{second['pid']}/environ").read_bytes()
        assert b"OMP_NUM_THREADS=1\0" in initial
        other = await snapshot(sup, "other", env={"OMP_NUM_THREADS": "2"})
        assert sup.pool.handed_out == 1  # another value: not that child
    assert first["environ"]["OMP_NUM_THREADS"] == second["environ"]["OMP_NUM_THREADS"] == "1"
    assert other["environ"]["OMP_NUM_THREADS"] == "2"


async def test_the_first_fill_gives_the_first_start_its_first_requests_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the start that asked for it, the first fill waits ``REFILL_DELAY`` as every
    refill does: spawning the fork server forks the supervisor, which held up the
    first request of ``serve``'s app."""
    monkeypatch.setattr(pool_module, "REFILL_DELAY", 60.0)
    async with Supervisor(gpu_backend=None, pool_size=1, learn_preloads=False) as sup:
        app = await sup.start(APPS / "sup_crashy")
        assert app.status()["replicas"][0]["start"] == "spawn"
        await app.run({"how": "ok"})
        await anyio.sleep(0.3)
        assert sup.pool.spawned == 0
        assert pool_children() == []


async def test_the_first_fill_waits_for_starts_issued_with_the_supervisor(tmp_path: Path) -> None:
    """``serve``'s apps start with the supervisor and cannot use the pool yet: no fork
    server or idle child may compete with them for the CPU until they are up."""
    gate = tmp_path / "gate"
    setup = {"gate": str(gate), "seconds": 60}

    async with Supervisor(gpu_backend=None, pool_size=1, learn_preloads=False) as sup:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(partial(sup.start, APPS / "sup_slow_setup", setup=setup))
            with anyio.fail_after(30):
                while (
                    "sup_slow_setup" not in sup.apps
                    or sup.apps["sup_slow_setup"].status()["state"] != "setting_up"
                ):
                    await anyio.sleep(0.02)
            await anyio.sleep(0.3)  # past the first fill's grace: a start is going on
            assert pool_children() == []
            assert sup.pool.spawned == 0
            gate.touch()
        assert sup.apps["sup_slow_setup"].status()["replicas"][0]["start"] == "spawn"
        with anyio.fail_after(60):  # then the pool fills
            while not sup.pool.settled():
                await anyio.sleep(0.02)
        assert sup.pool.idle_count() == 1
