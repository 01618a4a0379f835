"""The supervisor's public API: start, run, stream, config changes, start-up
failures, the child's environment and GPU pinning, and shutdown."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest
from sup_helpers import FakeGpus, in_flight, make_supervisor, wait_for

from supervisor import (
    PartialEvent,
    ResultEvent,
    Supervisor,
)
from supervisor.errors import (
    AppStoppedError,
    InputValidationError,
    LoadFailedError,
    SetupFailedError,
    SupervisorError,
    UnknownFunctionError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]


# -- the happy path -------------------------------------------------------------


async def test_public_usage(apps_dir: Path, wait_gone: Any) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "multi", setup={"greeting": "Hi"})
        assert await app.run({"name": "Ada"}) == {"output_meta": None, "greeting": "Hi, Ada"}
        assert (await app.run({"text": "abc"}, function="reverse"))["text"] == "cba"
        assert (await app.run({"a": 1, "b": 2}, function="add"))["sum"] == 3

        events = [event async for event in app.stream({"n": 3}, function="count")]
        assert [e.output["n"] for e in events if isinstance(e, PartialEvent)] == [1, 2, 3]
        assert isinstance(events[-1], ResultEvent)
        assert events[-1].output["n"] == 3
        assert set(events[-1].timings) == {"queued", "run", "total"}
        assert len({e.request_id for e in events}) == 1

        assert set(app.functions) == {"run", "reverse", "count", "add"}
        assert app.functions["count"]["streaming"] is True
        assert app.setup_schema is not None
        assert "greeting" in app.setup_schema["properties"]

        status = app.status()
        pid = status["pids"][0]
        assert status["name"] == "multi"
        assert status["state"] == "ready"
        assert status["ready"] is True
        assert len(status["pids"]) == 1
        assert status["restarts"] == 0
        assert status["last_exit"] is None
        assert status["gpus"] == []
        assert status["cold_start"] > 0
        assert status["queued"] == 0
        assert sup.status()["apps"]["multi"]["pids"] == [pid]

        out = await app.run({"name": "Ada"}, setup={"greeting": "Yo"})
        assert out["greeting"] == "Yo, Ada"
        new_pid = app.status()["pids"][0]
        assert new_pid != pid
        assert wait_gone([pid], zombie_ok=False) == []
        # The new values became the default.
        assert (await app.run({"name": "Bo"}))["greeting"] == "Yo, Bo"
        assert app.status()["pids"] == [new_pid]


async def test_bad_requests_do_not_hurt_the_child(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "multi")
        pid = app.status()["pids"]
        with pytest.raises(UnknownFunctionError) as unknown:
            await app.run({}, function="nope")
        assert "reverse" in unknown.value.message
        with pytest.raises(InputValidationError) as invalid:
            await app.run({"n": -1}, function="count")
        assert invalid.value.errors and invalid.value.errors[0]["loc"][-1] == "n"
        assert (await app.run({"name": "Ada"}))["greeting"] == "Hello, Ada"
        assert app.status()["pids"] == pid
        assert app.status()["restarts"] == 0


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_a_stop_while_a_config_change_waits_for_idle_stops_cleanly(
    apps_dir: Path, concurrency: int
) -> None:
    """The config change resumes after the stop: it must see the stopped replica
    (it used to try STOPPING -> UNLOADED, which broke the app's task group)."""
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", max_concurrency=concurrency)
        outcomes: dict[str, Any] = {}

        async def call(key: str, data: dict[str, Any], setup: dict[str, Any] | None) -> None:
            try:
                outcomes[key] = await app.run(data, setup=setup)
            except SupervisorError as exc:
                outcomes[key] = exc

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "long", {"delay": 1.0}, None)
            await wait_for(lambda: in_flight(app) == 1)
            tasks.start_soon(call, "other config", {}, {"tag": "two"})
            await anyio.sleep(0.2)
            await app.stop()
        assert app.status()["state"] == "stopped"
        assert isinstance(outcomes["long"], AppStoppedError)
        assert isinstance(outcomes["other config"], AppStoppedError)


async def test_a_config_change_is_not_starved_by_overlapping_calls(apps_dir: Path) -> None:
    """Calls with the old setup that keep the child busy may not start on it
    while a call with new setup values waits for it to be idle."""
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", setup={"tag": "one"}, max_concurrency=3)
        done = anyio.Event()

        async def keep_busy(offset: float) -> None:
            await anyio.sleep(offset)
            while not done.is_set():
                await app.run({"delay": 0.2}, setup={"tag": "one"})

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(keep_busy, 0.0)
            tasks.start_soon(keep_busy, 0.1)
            await anyio.sleep(0.3)
            with anyio.fail_after(30):  # a hang guard: starved, it never returns
                out = await app.run({}, setup={"tag": "two"})
            done.set()
        assert out["tag"] == "two"


async def test_config_change_replaces_the_child_after_unloading_it(
    apps_dir: Path, tmp_path: Path, wait_gone: Any
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", setup={"tag": "one", "marker": str(first)})
        out = await app.run({"text": "a"})
        assert out["tag"] == "one"
        old_pid = out["pid"]
        out = await app.run({"text": "b"}, setup={"tag": "two", "marker": str(second)})
        assert out["tag"] == "two"
        assert out["pid"] != old_pid
        assert wait_gone([old_pid], zombie_ok=False) == []
        assert first.read_text() == f"unloaded {old_pid}", "the old child was not unloaded"
        assert not second.exists()
        # Same values again: the same child serves them.
        out2 = await app.run({"text": "c"}, setup={"tag": "two", "marker": str(second)})
        assert out2["pid"] == out["pid"]
        status = app.status()
        assert status["restarts"] == 0, "a config change is not a crash"
        assert status["last_exit"] is None
    assert second.read_text() == f"unloaded {out['pid']}"


# -- start-up failures ---------------------------------------------------------


async def test_setup_failure_raises_setup_failed_with_traceback(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        with anyio.fail_after(30), pytest.raises(SetupFailedError) as info:
            await sup.start(apps_dir / "sup_setup_fail")
        error = info.value
        assert type(error) is SetupFailedError
        assert "setup exploded on purpose" in error.message
        assert "explode" in error.details["traceback"]
        assert "RuntimeError" in error.details["traceback"]
        assert error.to_dict()["type"] == "setup_failed"
        assert sup.apps == {}


async def test_child_dying_before_its_handshake_is_reported(apps_dir: Path) -> None:
    early = apps_dir / "sup_die_early" / "early"
    async with make_supervisor() as sup:
        # Reported when the child exits, not after a handshake timeout.
        with anyio.fail_after(30), pytest.raises(SetupFailedError) as info:
            await sup.start(apps_dir / "sup_die_early", env={"PYTHONPATH": str(early)})
        error = info.value
        assert "handshake" in error.message
        assert "exited with code 7" in error.message
        assert error.details["exit_code"] == 7
        assert "dying before the handshake" in error.details["stderr"]
        assert sup.apps == {}


async def test_child_dying_during_setup_is_reported(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        with anyio.fail_after(30), pytest.raises(SetupFailedError) as info:
            await sup.start(apps_dir / "sup_crash_in_setup")
        error = info.value
        assert "setup" in error.message
        assert "exited with code 4" in error.message
        assert error.details["exit_code"] == 4
        assert sup.apps == {}


async def test_slow_setup_beyond_setup_timeout(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        started = time.monotonic()
        # setup_timeout, not the 60 s setup.
        with anyio.fail_after(30), pytest.raises(SetupFailedError) as info:
            await sup.start(apps_dir / "sup_slow_setup", setup={"seconds": 60}, setup_timeout=1)
        assert time.monotonic() - started >= 1, "failed before setup_timeout"
        assert "within 1 s" in info.value.message
        assert sup.apps == {}
        # Nothing is left over: the same app starts fine with a quick setup.
        app = await sup.start(apps_dir / "sup_slow_setup", setup={"seconds": 0}, setup_timeout=5)
        assert (await app.run({"text": "ok"}))["text"] == "ok"


async def test_import_error_raises_load_failed(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        with anyio.fail_after(30), pytest.raises(LoadFailedError) as info:
            await sup.start(apps_dir / "broken_import")
        assert "broken_import: this app cannot be imported" in info.value.message
        assert info.value.to_dict()["type"] == "load_failed"
        assert sup.apps == {}


async def test_not_an_app_directory_raises_load_failed(tmp_path: Path) -> None:
    async with make_supervisor() as sup:
        with pytest.raises(LoadFailedError) as info:
            await sup.start(tmp_path)
        assert "inference.py" in info.value.message


async def test_malformed_manifest_raises_load_failed(apps_dir: Path, tmp_path: Path) -> None:
    app_dir = tmp_path / "bad_manifest"
    shutil.copytree(apps_dir / "sup_async", app_dir)
    (app_dir / "inf.yml").write_text("name: [oops\n")
    async with make_supervisor() as sup:
        with pytest.raises(LoadFailedError) as info:
            await sup.start(app_dir)
        assert "inf.yml" in info.value.message


async def test_duplicate_app_name_is_refused(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        await sup.start(apps_dir / "sup_async")
        with pytest.raises(InputValidationError):
            await sup.start(apps_dir / "sup_async")
        second = await sup.start(apps_dir / "sup_async", name="sup_async_2")
        assert second.name == "sup_async_2"
        assert set(sup.apps) == {"sup_async", "sup_async_2"}


# -- the child's environment -----------------------------------------------------


async def test_child_environment_is_an_allowlist(
    apps_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_SECRET", "x")
    monkeypatch.setenv("FOO", "host-foo")
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy", env={"FOO": "bar"})
        out = await app.run({"how": "ok"})
        env = out["env"]
        assert env["MY_SECRET"] is None
        assert env["FOO"] == "bar"
        assert env["FROM_YML"] == "from-inf-yml"
        assert env["SUPERVISOR_PARENT_PID"] == str(os.getpid())
        assert out["cwd"] == str((apps_dir / "sup_crashy").resolve())
        plain = await sup.start(apps_dir / "sup_crashy", name="plain")
        env = (await plain.run({"how": "ok"}))["env"]
        assert env["FOO"] is None
        assert env["MY_SECRET"] is None


@pytest.fixture
def fake_nvml(fake_gpus: FakeGpus) -> Path:
    return fake_gpus(16384, 16384)


@pytest.mark.usefixtures("fake_nvml")
async def test_cuda_visible_devices_is_the_allocated_device(apps_dir: Path) -> None:
    app_dir = apps_dir / "sup_crashy"
    async with Supervisor(cancel_grace=0.5, unload_timeout=2.0) as sup:
        assert sup.gpu_backend is not None, "the fake NVML backend was not picked up"
        first = await sup.start(app_dir, name="first", gpus=1)
        second = await sup.start(app_dir, name="second", gpus=1)
        pinned = await sup.start(app_dir, name="pinned", gpus=[1])
        cpu = await sup.start(app_dir, name="cpu")
        seen = {}
        for app in (first, second, pinned, cpu):
            out = await app.run({"how": "ok"})
            seen[app.name] = out
            assert out["env"]["CUDA_VISIBLE_DEVICES"] == out["cuda"]
            # NVML indices are in PCI bus order; CUDA must number devices the same way.
            assert out["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert {seen["first"]["cuda"], seen["second"]["cuda"]} == {"0", "1"}
        assert first.status()["gpus"] == [int(seen["first"]["cuda"])]
        assert second.status()["gpus"] == [int(seen["second"]["cuda"])]
        assert seen["pinned"]["cuda"] == "1"
        assert pinned.status()["gpus"] == [1]
        assert seen["cpu"]["cuda"] == ""
        assert cpu.status()["gpus"] == []


@pytest.mark.usefixtures("fake_nvml")
async def test_cuda_visible_devices_cannot_be_overridden_by_start_env(apps_dir: Path) -> None:
    async with Supervisor(cancel_grace=0.5, unload_timeout=2.0) as sup:
        app = await sup.start(
            apps_dir / "sup_crashy", gpus=[0], env={"CUDA_VISIBLE_DEVICES": "0,1"}
        )
        assert (await app.run({"how": "ok"}))["cuda"] == "0"


async def test_cpu_only_child_sees_no_device(
    apps_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        assert (await app.run({"how": "ok"}))["cuda"] == ""


# -- shutdown ------------------------------------------------------------------


async def test_a_supervisor_leaves_no_unclosed_resource_behind(apps_dir: Path) -> None:
    """Pipes, transports, streams and temporary directories are closed, not left to
    the garbage collector: after starts, calls, a crash, a standby, a start cancelled
    while its child spawns, and the exit, collecting garbage warns of nothing."""
    gc.collect()  # what earlier tests in this worker left is theirs, not this supervisor's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with make_supervisor() as sup:
            app = await sup.start(apps_dir / "sup_async", standby=True)
            await app.run({"text": "x"})
            pid = app.status()["pids"][0]
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: app.status()["pids"] not in ([], [pid]))
            await app.run({"text": "y"})
            for delay in (0.0, 0.001, 0.005, 0.02):
                with anyio.move_on_after(delay):
                    await sup.start(apps_dir / "sup_async", name=f"cancelled-{delay}")
        await anyio.sleep(0.1)  # the threaded child watcher's last callbacks
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


async def test_leaving_the_context_unloads_every_child(
    apps_dir: Path, tmp_path: Path, wait_gone: Any
) -> None:
    markers = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    async with make_supervisor() as sup:
        one = await sup.start(apps_dir / "sup_async", setup={"marker": str(markers[0])})
        two = await sup.start(
            apps_dir / "sup_async",
            name="two",
            replicas=2,
            setup={"marker": str(markers[1])},
        )
        pids = one.status()["pids"] + two.status()["pids"]
        assert len(set(pids)) == 3
        await one.run({"text": "x"})
    assert markers[0].read_text() == f"unloaded {pids[0]}"
    written = markers[1].read_text()
    assert written in (f"unloaded {pids[1]}", f"unloaded {pids[2]}")
    assert wait_gone(pids, zombie_ok=False) == []
    assert one.status()["state"] == "stopped"
    assert one.status()["pids"] == []
    with pytest.raises(AppStoppedError):
        await one.run({"text": "late"})


async def test_stopping_one_app_leaves_the_others(
    apps_dir: Path, tmp_path: Path, wait_gone: Any
) -> None:
    marker = tmp_path / "stopped"
    async with make_supervisor() as sup:
        doomed = await sup.start(apps_dir / "sup_async", setup={"marker": str(marker)})
        other = await sup.start(apps_dir / "multi")
        pid = doomed.status()["pids"][0]
        await doomed.stop()
        assert marker.read_text() == f"unloaded {pid}"
        assert wait_gone([pid], zombie_ok=False) == []
        assert set(sup.apps) == {"multi"}
        with pytest.raises(AppStoppedError):
            await doomed.run({"text": "late"})
        await doomed.stop()  # idempotent
        assert (await other.run({"name": "Ada"}))["greeting"] == "Hello, Ada"


async def test_stop_fails_requests_in_flight_and_queued(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", max_concurrency=1)
        outcomes: list[BaseException | None] = []

        async def call(payload: dict[str, Any]) -> None:
            try:
                await app.run(payload)
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call, {"hang": True})
                await anyio.sleep(0.3)
                tasks.start_soon(call, {"text": "queued"})
                await anyio.sleep(0.1)
                await app.stop()
        assert len(outcomes) == 2
        assert all(isinstance(exc, AppStoppedError) for exc in outcomes), outcomes
