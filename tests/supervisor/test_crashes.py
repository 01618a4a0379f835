"""Children that crash, are killed or hang: what callers see, and recovery.

Every test checks that the request in flight fails with the right class from
``supervisor.errors``, that the next request is served by a new child, that
``app.status()`` tells the story (restarts, last exit) and that no process is
left behind.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psutil
import pytest
from sup_helpers import in_flight, make_supervisor, only_pid, outcome, wait_for

from protocol import Load, Message
from supervisor import App, RestartPolicy
from supervisor.core import replica as replica_module
from supervisor.core.replica import Replica
from supervisor.core.request import Request
from supervisor.errors import (
    AppFailedError,
    ChildCrashedError,
    LoadFailedError,
    ProtocolViolationError,
    RequestCancelledError,
    RequestTimeoutError,
    SupervisorError,
)
from supervisor.process.child_channel import ChildChannel

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]


async def wait_running(app: App, count: int = 1) -> None:
    await wait_for(lambda: in_flight(app) >= count)


async def assert_recovered(app: App, old_pid: int, wait_gone: Any, restarts: int = 1) -> int:
    """The next request is served by a new child; the old one is gone."""
    out = await app.run({"how": "ok"})
    assert out["pid"] != old_pid
    assert wait_gone([old_pid], zombie_ok=False) == [], "the dead child was not reaped"
    status = app.status()
    assert status["state"] == "ready"
    assert status["restarts"] == restarts
    assert status["pids"] == [out["pid"]]
    return int(out["pid"])


async def test_exit_code_crash_is_reported_and_recovered(apps_dir: Path, wait_gone: Any) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        first = await app.run({"how": "ok"})
        pid = first["pid"]
        assert only_pid(app) == pid
        with pytest.raises(ChildCrashedError) as info:
            await app.run({"how": "exit"})
        error = info.value
        assert type(error) is ChildCrashedError
        assert error.details["exit_code"] == 3
        assert error.details["signal"] is None
        assert error.details["oom_killed"] is False
        assert "exited with code 3" in error.message
        assert error.to_dict()["type"] == "child_crashed"
        await assert_recovered(app, pid, wait_gone)
        last_exit = app.status()["last_exit"]
        assert last_exit["exit_code"] == 3
        assert last_exit["signal"] is None
        assert "exited with code 3" in last_exit["reason"]


async def test_segfault_is_reported_with_signal_and_traceback(
    apps_dir: Path, wait_gone: Any
) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        pid = (await app.run({"how": "ok"}))["pid"]
        with pytest.raises(ChildCrashedError) as info:
            await app.run({"how": "segv"})
        assert info.value.details["signal"] == "SIGSEGV"
        assert info.value.details["exit_code"] is None
        assert "SIGSEGV" in info.value.message
        # faulthandler's report reaches the supervisor through the child's stderr.
        assert "Fatal Python error" in info.value.details.get("stderr", "")
        await assert_recovered(app, pid, wait_gone)
        assert app.status()["last_exit"]["signal"] == "SIGSEGV"


async def test_sigkill_while_running(apps_dir: Path, wait_gone: Any, tmp_path: Path) -> None:
    inside = tmp_path / "inside"
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        pid = only_pid(app)
        request = app.submit({"how": "sleep", "seconds": 60, "started": str(inside)})
        await wait_for(inside.exists)
        os.kill(pid, signal.SIGKILL)
        # Failed by the kill, not after the 60 s sleep.
        with anyio.fail_after(30), pytest.raises(ChildCrashedError) as info:
            await outcome(request)
        assert info.value.details["signal"] == "SIGKILL"
        assert info.value.details["oom_killed"] is False
        assert "SIGKILL" in info.value.message
        await assert_recovered(app, pid, wait_gone)
        assert app.status()["last_exit"]["signal"] == "SIGKILL"
        assert "SIGKILL" in app.status()["last_exit"]["reason"]


async def test_sigkill_while_idle_restarts_in_the_background(
    apps_dir: Path, wait_gone: Any
) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        pid = only_pid(app)
        os.kill(pid, signal.SIGKILL)
        # The first crash restarts at once, before any request asks for it.
        await wait_for(
            lambda: app.status()["state"] == "ready" and app.status()["pids"] not in ([], [pid])
        )
        status = app.status()
        assert status["restarts"] == 1
        assert status["last_exit"]["signal"] == "SIGKILL"
        new_pid = status["pids"][0]
        out = await app.run({"how": "ok"})
        assert out["pid"] == new_pid != pid
        assert wait_gone([pid], zombie_ok=False) == []


async def test_a_restart_loads_the_app_without_asking_for_its_description_again(
    apps_dir: Path, wait_gone: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Load] = []
    send = ChildChannel.send

    async def spy(channel: ChildChannel, message: Message) -> None:
        if isinstance(message, Load):
            loads.append(message)
        await send(channel, message)

    monkeypatch.setattr(ChildChannel, "send", spy)
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        functions = app.functions
        assert "run" in functions
        pid = only_pid(app)
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: app.status()["pids"] not in ([], [pid]))
        await assert_recovered(app, pid, wait_gone)
        assert [load.describe for load in loads] == [True, False]
        assert app.functions == functions


async def test_a_stop_that_lands_as_a_restart_finishes_loading_ends_the_restart(
    apps_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stop()`` can run between the answer to a restart's load and the restart
    resuming, before the cancellation reaches it: the restart must then end
    without a setup, leaving no child (it used to try STOPPED -> SETTING_UP)."""
    load = Replica._load
    loaded: list[int] = []

    async def load_then_stop(replica: Replica, child: Any) -> None:
        await load(replica, child)
        loaded.append(child.process.pid)
        if len(loaded) == 2:  # the restart's load
            replica.tasks.start_soon(replica.stop)
            await anyio.lowlevel.cancel_shielded_checkpoint()  # stop() runs meanwhile
            assert replica.stopping

    monkeypatch.setattr(Replica, "_load", load_then_stop)
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        os.kill(only_pid(app), signal.SIGKILL)
        await wait_for(lambda: len(loaded) == 2 and app.status()["state"] == "stopped")
        assert app.status()["pids"] == []
        with pytest.raises(SupervisorError):
            await app.run({})
    assert not psutil.pid_exists(loaded[1]) or psutil.Process(loaded[1]).status() == "zombie"


@pytest.mark.parametrize("failure", ["load failed", "child gone"])
async def test_a_stop_that_lands_as_a_restart_fails_leaves_the_replica_stopped(
    apps_dir: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The same race when the restart's load fails: the failure must not move the
    stopped replica to FAILED or RESTARTING."""
    load = Replica._load
    loads: list[int] = []

    async def stop_then_fail(replica: Replica, child: Any) -> None:
        loads.append(child.process.pid)
        if len(loads) == 1:
            await load(replica, child)
            return
        replica.tasks.start_soon(replica.stop)
        await anyio.lowlevel.cancel_shielded_checkpoint()
        if failure == "load failed":
            raise LoadFailedError("the app cannot be imported")
        raise replica_module._StartFailed("the child exited before its handshake")

    monkeypatch.setattr(Replica, "_load", stop_then_fail)
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        os.kill(only_pid(app), signal.SIGKILL)
        await wait_for(lambda: len(loads) == 2 and app.status()["state"] == "stopped")
        await anyio.sleep(0.1)
        assert app.status()["state"] == "stopped"
        assert app.status()["pids"] == []


async def test_hang_times_out_then_child_is_killed_and_replaced(
    apps_dir: Path, wait_gone: Any
) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy", run_timeout=0.5)
        pid = only_pid(app)
        started = time.monotonic()
        # run_timeout, then cancel_grace for the (ignored) cancel; not 1000 s.
        with anyio.fail_after(30), pytest.raises(RequestTimeoutError) as info:
            await app.run({"how": "hang"})
        assert time.monotonic() - started >= 0.5, "timed out before run_timeout"
        assert "0.5 s" in info.value.message
        assert info.value.to_dict()["type"] == "timeout"
        await assert_recovered(app, pid, wait_gone)
        assert "did not finish within 0.5 s" in app.status()["last_exit"]["reason"]


async def test_per_request_timeout_overrides_the_app_default(
    apps_dir: Path, wait_gone: Any
) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy", run_timeout=60)
        pid = only_pid(app)
        with anyio.fail_after(30), pytest.raises(RequestTimeoutError):
            await app.run({"how": "hang"}, timeout=0.3)
        await assert_recovered(app, pid, wait_gone)


async def test_requests_queued_behind_a_crash_are_not_lost(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy", max_concurrency=1)
        crashing = app.submit({"how": "exit"})
        followers = [app.submit({"how": "ok"}) for _ in range(4)]
        results: dict[int, Any] = {}

        async def collect(i: int, request: Request) -> None:
            try:
                results[i] = await outcome(request)
            except SupervisorError as exc:
                results[i] = exc

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(collect, -1, crashing)
                for i, request in enumerate(followers):
                    tasks.start_soon(collect, i, request)
        assert isinstance(results.pop(-1), ChildCrashedError)
        for i, result in results.items():
            assert isinstance(result, dict), f"request {i} failed: {result!r}"
            assert result["pid"] == only_pid(app)
        assert app.status()["restarts"] == 1


async def test_segfault_with_concurrent_requests_only_fails_the_in_flight_ones(
    apps_dir: Path,
) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy", max_concurrency=2)
        pid = only_pid(app)
        sleeping = app.submit({"how": "sleep", "seconds": 30})
        await wait_running(app)
        crashing = app.submit({"how": "segv"})
        queued = [app.submit({"how": "ok"}) for _ in range(3)]
        with anyio.fail_after(30):
            with pytest.raises(ChildCrashedError) as info:
                await outcome(sleeping)
            assert info.value.details["signal"] == "SIGSEGV"
            with pytest.raises(ChildCrashedError):
                await outcome(crashing)
            outputs = [await outcome(r) for r in queued]
        assert {o["pid"] for o in outputs} == {only_pid(app)}
        assert only_pid(app) != pid


async def test_run_that_always_crashes_ends_in_failed(apps_dir: Path, wait_gone: Any) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        pids = [only_pid(app)]
        for _ in range(3):
            with anyio.fail_after(30), pytest.raises(ChildCrashedError):
                await app.run({"how": "exit"})
            await wait_for(lambda: app.status()["state"] in ("ready", "failed"))
            pids.extend(app.status()["pids"])
        status = app.status()
        assert status["state"] == "failed"
        assert status["restarts"] == 2
        assert status["ready"] is False
        assert status["pids"] == []
        assert "3 crashes within 30 s" in status["replicas"][0]["failure"]
        with pytest.raises(AppFailedError) as info:
            await app.run({"how": "ok"})
        assert "sup_crashy" in info.value.message
        assert "3 crashes within 30 s" in info.value.message
        assert "the limit is 2 restarts" in info.value.message
        assert info.value.to_dict()["type"] == "app_failed"
        assert len(set(pids)) == 3
        assert wait_gone(pids, zombie_ok=False) == []


async def test_setup_that_crashes_after_the_first_start_ends_in_failed(
    apps_dir: Path, tmp_path: Path, wait_gone: Any
) -> None:
    marker = tmp_path / "first-setup-done"
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crash_in_setup", setup={"once_marker": str(marker)})
        assert marker.exists()
        pid = only_pid(app)
        assert (await app.run({"how": "ok"}))["pid"] == pid
        with pytest.raises(ChildCrashedError):
            await app.run({"how": "exit"})
        # Each restart dies in setup (os._exit(4)): restarted twice, then given up.
        await wait_for(lambda: app.status()["state"] == "failed")
        status = app.status()
        assert status["restarts"] == 2
        assert status["pids"] == []
        failure = status["replicas"][0]["failure"]
        assert "crashes within 30 s" in failure
        assert "exited with code 4" in failure
        with pytest.raises(AppFailedError) as info:
            await app.run({"how": "ok"})
        assert "exited with code 4" in info.value.message
        assert wait_gone([pid], zombie_ok=False) == []


async def test_a_request_waiting_for_a_doomed_restart_gets_app_failed(
    apps_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "first-setup-done"
    policy = RestartPolicy(max_restarts=2, window=30, base_delay=0.3)
    async with make_supervisor(restart_policy=policy) as sup:
        app = await sup.start(apps_dir / "sup_crash_in_setup", setup={"once_marker": str(marker)})
        with pytest.raises(ChildCrashedError):
            await app.run({"how": "exit"})
        # Sent while the replica is still restarting: it must not hang or be lost.
        with anyio.fail_after(30), pytest.raises(AppFailedError):
            await app.run({"how": "ok"})


async def test_crashes_outside_the_window_do_not_accumulate(apps_dir: Path, wait_gone: Any) -> None:
    async with make_supervisor(restart_policy=RestartPolicy(max_restarts=1, window=0.5)) as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        for restarts in (1, 2, 3):
            with pytest.raises(ChildCrashedError):
                await app.run({"how": "exit"})
            out = await app.run({"how": "ok"})
            assert app.status()["restarts"] == restarts
            assert app.status()["state"] == "ready"
            await anyio.sleep(0.6)
        assert psutil.pid_exists(out["pid"])


async def test_timeout_of_a_request_that_honours_cancel_keeps_the_child(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", run_timeout=0.3)
        pid = only_pid(app)
        with anyio.fail_after(30), pytest.raises(RequestTimeoutError):
            await app.run({"hang": True})
        out = await app.run({"text": "after"})
        assert out["pid"] == pid
        assert app.status()["restarts"] == 0


async def test_a_stopped_child_is_caught_by_the_heartbeat(apps_dir: Path, wait_gone: Any) -> None:
    async with make_supervisor(heartbeat_interval=0.2, heartbeat_timeout=0.5) as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        pid = only_pid(app)
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_for(lambda: app.status()["restarts"] == 1)
        finally:
            if wait_gone([pid], timeout=0):
                os.kill(pid, signal.SIGCONT)
        assert "heartbeat" in app.status()["last_exit"]["reason"]
        await assert_recovered(app, pid, wait_gone)


async def test_a_request_cancelled_while_waiting_for_a_restart_never_runs(
    apps_dir: Path,
) -> None:
    policy = RestartPolicy(max_restarts=2, window=30, first_delay=3.0)
    async with make_supervisor(restart_policy=policy) as sup:
        app = await sup.start(apps_dir / "sup_crashy", max_concurrency=1)
        with pytest.raises(ChildCrashedError):
            await app.run({"how": "exit"})
        assert app.status()["state"] == "restarting"
        doomed = app.submit({"how": "hang"})
        await anyio.sleep(0.2)
        assert await app.cancel(doomed.id) is True
        with anyio.fail_after(30), pytest.raises(RequestCancelledError):
            await outcome(doomed)
        assert app.status()["state"] == "restarting", "the cancel waited for the restart"
        # The cancelled request must not occupy the only concurrency slot once
        # the child is back: the next request is served promptly.
        with anyio.fail_after(30):
            out = await app.run({"how": "ok"})
        assert out["pid"] == only_pid(app)
        assert app.status()["replicas"][0]["in_flight"] == 0


async def test_hung_child_that_ignores_sigterm_is_sigkilled(apps_dir: Path, wait_gone: Any) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy", run_timeout=0.3)
        pid = only_pid(app)
        with anyio.fail_after(30), pytest.raises(RequestTimeoutError):
            await app.run({"how": "ignore_term_hang"})
        # SIGTERM is ignored; the kill must escalate to SIGKILL after its grace.
        with anyio.fail_after(30):
            await assert_recovered(app, pid, wait_gone)
        assert app.status()["last_exit"]["signal"] == "SIGKILL"


async def test_a_child_that_corrupts_its_channel_is_killed_and_replaced(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_corrupt")
        before = await app.run({})
        with pytest.raises(ProtocolViolationError) as caught:
            await app.run({"corrupt": True})
        assert "broke the protocol" in str(caught.value)
        after = await app.run({})
        assert after["pid"] != before["pid"]
        status = app.status()
        assert status["restarts"] == 1
        assert status["restarts_by_reason"] == {"protocol": 1}
        assert "broke the protocol" in status["last_exit"]["reason"]
