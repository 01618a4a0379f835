"""The fork server: a forked child must be indistinguishable from a fresh one.

A start forks when the pool has no idle child left; the tests empty the pool
first (``take`` the idle child and stop it: nothing refills until a start
asks), so that the next start is forked, and check it said so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
from sup_helpers import FakeGpus, make_supervisor, only_pid, wait_for

from supervisor import App, Supervisor
from supervisor.errors import ChildCrashedError
from supervisor.process.pool import PoolKey, _unsafe_to_fork

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"


async def fork_server_ready(sup: Supervisor, preload: tuple[str, ...] = ()) -> None:
    """Wait until the key's fork server runs and has filled the pool."""
    key = PoolKey(sup.pool.default_key.python, preload)
    with anyio.fail_after(60):
        while not (
            sup.pool.idle_count(preload) >= sup.pool.size
            and any(s["ready"] for s in sup.pool.status()["fork_servers"].values())
        ):
            await anyio.sleep(0.02)
    pooled = sup.pool.take(key)  # the next start finds the pool empty: it forks
    assert pooled is not None
    await pooled.process.terminate(1.0)
    pooled.process.close_pipes()


def start_of(app: App) -> str:
    return str(app.status()["replicas"][0]["start"])


async def test_a_forked_child_looks_exactly_like_a_fresh_one(fake_gpus: FakeGpus) -> None:
    fake_gpus(16384, 16384)
    options = {"gpus": [1], "env": {"APP_SETTING": "on"}}
    introspect = APPS / "introspect"
    async with Supervisor(pool_size=0) as sup:
        app = await sup.start(introspect, name="fresh", **options)
        fresh = dict(await app.run({}))
        assert start_of(app) == "spawn"
    async with Supervisor(pool_size=1) as sup:
        await fork_server_ready(sup)
        app = await sup.start(introspect, name="forked", **options)
        forked = dict(await app.run({}))
        assert start_of(app) == "fork"
        assert sup.pool.forked == 1
        replica = app.status()["replicas"][0]
        if sup.confinement.mechanism == "cgroup":  # its own cgroup, as a spawned child
            assert replica["cgroup_memory"]["current"] > 0
    assert forked["environ"] == fresh["environ"]
    assert forked["environ"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert forked["environ"]["APP_SETTING"] == "on"
    assert forked["cwd"] == fresh["cwd"] == str(introspect)
    assert forked["path0"] == fresh["path0"] == str(introspect)
    assert forked["app_packages"] == fresh["app_packages"]
    assert forked["collecting"] == fresh["collecting"] == [True, True]
    assert forked["pid"] != fresh["pid"]
    # Like a pooled child, it paid first-use costs before it was needed.
    assert "child.prewarm" in forked["modules"]


async def test_forked_children_draw_their_own_random_numbers_and_share_no_state() -> None:
    async with Supervisor(pool_size=1, pool_preload=("numpy.random",), gpu_backend=None) as sup:
        await fork_server_ready(sup, ("numpy.random",))
        first_app = await sup.start(APPS / "fork_probe", name="a")
        first = await first_app.run({"mark": "a"})
        await fork_server_ready(sup, ("numpy.random",))
        second_app = await sup.start(APPS / "fork_probe", name="b")
        second = await second_app.run({"mark": "b"})
        assert start_of(first_app) == start_of(second_app) == "fork"
    assert first["pid"] != second["pid"]
    assert first["random"] != second["random"]
    # numpy.random (its global generator) was imported by the fork server: without a
    # reseed both would draw the same.
    assert first["numpy_random"] != second["numpy_random"]
    # A module attribute that app a set is not there for app b.
    assert first["previous_mark"] is None and second["previous_mark"] is None
    assert second["cwd"] == str(APPS / "fork_probe")


async def test_a_forked_child_exit_code_is_reported_and_it_is_restarted(wait_gone: Any) -> None:
    async with make_supervisor(pool_size=1, fork_server=True) as sup:
        await fork_server_ready(sup)
        app = await sup.start(APPS / "sup_crashy")
        assert start_of(app) == "fork"
        pid = (await app.run({"how": "ok"}))["pid"]
        with pytest.raises(ChildCrashedError) as info:
            await app.run({"how": "exit"})
        assert info.value.details["exit_code"] == 3
        assert info.value.details["signal"] is None
        out = await app.run({"how": "ok"})
        assert out["pid"] != pid
        assert wait_gone([pid], zombie_ok=False) == []
        status = app.status()
        assert status["restarts"] == 1
        assert status["last_exit"]["exit_code"] == 3
        assert out["cwd"] == str(APPS / "sup_crashy")
        assert out["env"]["FROM_YML"] == "from-inf-yml"


async def test_a_forked_child_killed_by_a_signal_is_reported_with_it(wait_gone: Any) -> None:
    async with make_supervisor(pool_size=1, fork_server=True) as sup:
        await fork_server_ready(sup)
        app = await sup.start(APPS / "sup_crashy")
        assert start_of(app) == "fork"
        with pytest.raises(ChildCrashedError) as info:
            await app.run({"how": "segv"})
        assert info.value.details["signal"] == "SIGSEGV"
        assert info.value.details["exit_code"] is None
        assert "Fatal Python error" in info.value.details.get("stderr", "")
        pid = only_pid(app) if app.status()["pids"] else None
        await app.run({"how": "ok"})
        assert app.status()["last_exit"]["signal"] == "SIGSEGV"
        os.kill(only_pid(app), signal.SIGKILL)
        await wait_for(lambda: app.status()["last_exit"]["signal"] == "SIGKILL")
        assert pid is None or wait_gone([pid], zombie_ok=False) == []


async def test_starts_spawn_when_the_fork_server_is_gone() -> None:
    async with make_supervisor(pool_size=1, fork_server=True) as sup:
        await fork_server_ready(sup)
        (server,) = sup.pool.status()["fork_servers"].values()
        os.kill(server["pid"], signal.SIGKILL)
        await wait_for(lambda: not sup.pool.status()["fork_servers"])
        app = await sup.start(APPS / "sup_crashy")
        assert start_of(app) in ("spawn", "pool")
        assert (await app.run({"how": "ok"}))["cwd"] == str(APPS / "sup_crashy")


async def test_children_forked_by_a_server_that_died_are_reported_killed() -> None:
    async with make_supervisor(pool_size=1, fork_server=True) as sup:
        await fork_server_ready(sup)
        app = await sup.start(APPS / "sup_crashy")
        assert start_of(app) == "fork"
        (server,) = sup.pool.status()["fork_servers"].values()
        os.kill(server["pid"], signal.SIGKILL)
        await wait_for(lambda: app.status()["last_exit"] is not None)
        assert app.status()["last_exit"]["signal"] == "SIGKILL"
        await wait_for(lambda: app.status()["state"] == "ready")
        assert start_of(app) in ("spawn", "pool")


async def test_without_a_fork_server_the_pool_spawns() -> None:
    async with make_supervisor(pool_size=1, fork_server=False) as sup:
        with anyio.fail_after(20):
            while sup.pool.idle_count() < 1:
                await anyio.sleep(0.02)
        app = await sup.start(APPS / "sup_crashy")
        assert start_of(app) == "pool"
        assert sup.pool.status()["fork_servers"] == {}
        app2 = await sup.start(APPS / "sup_crashy", name="second")
        assert start_of(app2) in ("spawn", "pool")
        assert sup.pool.forked == 0


ZYGOTE_SPOILERS = {
    "starts_a_thread": (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n",
        "is not used (its preloads started 1 Python thread(s))",
    ),
    "garbles_its_socket": (
        "import os, sys\nif sys.argv[0].endswith('fork_server.py'):\n"
        "    os.write(int(sys.argv[sys.argv.index('--socket') + 1]), b'\\xc1')\n",
        "sent a message that makes no sense",
    ),
    "kills_the_zygote": (
        "import os, sys\nif sys.argv[0].endswith('fork_server.py'):\n    os._exit(3)\n",
        "did not start",
    ),
}


@pytest.mark.parametrize("spoiler", sorted(ZYGOTE_SPOILERS))
async def test_a_fork_server_that_cannot_serve_is_logged_and_starts_spawn(
    spoiler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source, message = ZYGOTE_SPOILERS[spoiler]
    (tmp_path / f"{spoiler}.py").write_text(source)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    )
    with caplog.at_level("WARNING", logger="supervisor.pool"):
        async with make_supervisor(pool_size=1, fork_server=True, pool_preload=(spoiler,)) as sup:
            with anyio.fail_after(60):
                while not sup.pool.settled():
                    await anyio.sleep(0.02)
            assert sup.pool.status()["fork_servers"] == {}
            app = await sup.start(APPS / "sup_crashy")
            assert start_of(app) == "pool"  # a spawned pre-started child
            await sup.pool.drain()
            second = await sup.start(APPS / "sup_crashy", name="second")
            assert start_of(second) == "spawn"
            assert sup.pool.forked == 0
    assert message in caplog.text


def test_a_zygote_with_threads_or_cuda_is_not_used() -> None:
    assert _unsafe_to_fork({"python_threads": 1, "threads": 3, "cuda": False}) is None
    assert "thread" in str(_unsafe_to_fork({"python_threads": 2, "cuda": False}))
    assert "CUDA" in str(_unsafe_to_fork({"python_threads": 1, "cuda": True}))


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import anyio, psutil
    from supervisor import Supervisor
    from supervisor.process.pool import PoolKey

    async def main() -> None:
        async with Supervisor(gpu_backend=None, pool_size=1) as sup:
            while not any(s["ready"] for s in sup.pool.status()["fork_servers"].values()):
                await anyio.sleep(0.02)
            while sup.pool.idle_count() < 1:
                await anyio.sleep(0.02)
            pooled = sup.pool.take(PoolKey(sup.pool.default_key.python))
            await pooled.process.terminate(1.0)
            app = await sup.start(sys.argv[1])
            await app.run({"how": "ok"})
            (server,) = sup.pool.status()["fork_servers"].values()
            print(json.dumps({
                "start": app.status()["replicas"][0]["start"],
                "zygote": server["pid"],
                "forked": [p.pid for p in psutil.Process(server["pid"]).children(recursive=True)],
            }), flush=True)
            await anyio.sleep(600)

    anyio.run(main)
    """
)


def test_the_fork_server_and_its_children_die_with_a_sigkilled_supervisor(
    tmp_path: Path, wait_gone: Any
) -> None:
    script = tmp_path / "supervise.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(APPS / "sup_crashy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline() or "{}")
        assert info["start"] == "fork"
        pids = [info["zygote"], *info["forked"]]
        assert len(pids) >= 3  # the zygote, the app's reaper and its runtime
        assert wait_gone(pids, timeout=0) == pids  # all running
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_gone(pids, timeout=10.0) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        for pid in wait_gone(pids, timeout=0):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
