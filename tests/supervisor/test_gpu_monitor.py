from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from supervisor.core.resource_governor import policy_figures
from supervisor.gpu import monitor as monitor_module
from supervisor.gpu.backend import DeviceMemory, FakeNvmlBackend, GpuBackendError, GpuSample
from supervisor.gpu.eviction_policy import ChildFigures
from supervisor.gpu.monitor import ChildUsage, MonitorSnapshot, ResourceMonitor

MIB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A real child process that idles until killed, yielded once its interpreter runs
    (just after the exec its RSS is a few hundred KiB: a loaded machine showed it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def run_until(monitor: ResourceMonitor, done: anyio.Event) -> None:
    """Run the monitor's loop until ``done`` is set (or fail after 10 s)."""
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(monitor.run)
            await done.wait()
            tg.cancel_scope.cancel()


def write_fake(path: Path, pid: int, mib: int) -> None:
    doc = {
        "devices": [
            {"index": 0, "name": "Fake GPU", "total_mib": 16384},
            {"index": 1, "name": "Fake GPU", "total_mib": 8192},
        ],
        "processes": {str(pid): {"0": mib}},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


class FlakyBackend:
    """Fails the first ``failures`` samples, then reports one empty device."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def sample(self) -> GpuSample:
        self.calls += 1
        if self.calls <= self.failures:
            raise GpuBackendError("driver fell over")
        return GpuSample((DeviceMemory(0, "G", 100, 0, 100),), {}, 0.0)

    def close(self) -> None:
        pass


def test_sample_now_reports_devices_and_children(tmp_path: Path, sleeper: int) -> None:
    path = tmp_path / "nvml.json"
    write_fake(path, sleeper, 3072)
    monitor = ResourceMonitor(FakeNvmlBackend(path), interval=1.0)
    monitor.register("app", sleeper)
    assert monitor.registered == {"app": sleeper}

    snap = monitor.sample_now()
    assert monitor.latest is snap
    assert snap.gpu_error is None
    assert [(d.index, d.used, d.free) for d in snap.devices] == [
        (0, 3072 * MIB, (16384 - 3072) * MIB),
        (1, 0, 8192 * MIB),
    ]
    usage = snap.children["app"]
    assert (usage.key, usage.pid, usage.alive) == ("app", sleeper, True)
    assert usage.vram_by_device == {0: 3072 * MIB}
    assert usage.vram == 3072 * MIB
    assert usage.rss > 1 * MIB
    assert usage.sampled_at >= snap.taken_at
    assert snap.processes == {sleeper: {0: 3072 * MIB}}

    monitor.unregister("app")
    monitor.unregister("never-registered")
    assert monitor.sample_now().children == {}


def test_a_member_list_given_at_registration_replaces_the_process_walk(
    tmp_path: Path, sleeper: int
) -> None:
    """A child's cgroup lists its tree (``ChildProcess.tree_pids``); the monitor reads
    that list rather than walking the process table."""
    path = tmp_path / "nvml.json"
    write_fake(path, sleeper, 3072)
    monitor = ResourceMonitor(FakeNvmlBackend(path), interval=1.0)
    monitor.register("app", sleeper, lambda: [])
    usage = monitor.sample_now().children["app"]
    assert (usage.alive, usage.rss, dict(usage.vram_by_device)) == (False, 0, {})
    monitor.register("app", sleeper, lambda: [sleeper])
    assert monitor.sample_now().children["app"].vram == 3072 * MIB
    monitor.register("app", sleeper)  # the walk again
    assert monitor.sample_now().children["app"].alive


def test_child_gone_reads_as_nothing(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    monitor = ResourceMonitor(None, interval=1.0)
    monitor.register("gone", proc.pid)
    usage = monitor.sample_now().children["gone"]
    assert (usage.alive, usage.rss, dict(usage.vram_by_device)) == (False, 0, {})


def test_usage_becomes_policy_figures() -> None:
    usage = ChildUsage("k", 42, rss=7, vram_by_device={0: 3, 2: 4}, sampled_at=1.0)
    figures = policy_figures(
        usage, gpus=(0, 2), vram_budget=10, ram_budget=None, busy=True, last_used=5.0
    )
    assert figures == ChildFigures(
        key="k",
        pid=42,
        gpus=(0, 2),
        vram=7,
        rss=7,
        vram_budget=10,
        ram_budget=None,
        busy=True,
        last_used=5.0,
        vram_by_device={0: 3, 2: 4},
    )


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ResourceMonitor(None, interval=0)


@pytest.mark.anyio
async def test_run_calls_on_sample_with_fresh_figures(tmp_path: Path, sleeper: int) -> None:
    path = tmp_path / "nvml.json"
    write_fake(path, sleeper, 1024)
    seen: list[MonitorSnapshot] = []
    done = anyio.Event()

    async def on_sample(snapshot: MonitorSnapshot) -> None:
        seen.append(snapshot)
        if len(seen) == 2:
            write_fake(path, sleeper, 2048)  # the next rounds see the change
        if len(seen) == 4:
            done.set()

    monitor = ResourceMonitor(FakeNvmlBackend(path), interval=0.01, on_sample=on_sample)
    monitor.register("app", sleeper)
    await run_until(monitor, done)

    assert seen[0].children["app"].vram_by_device == {0: 1024 * MIB}
    assert seen[-1].children["app"].vram_by_device == {0: 2048 * MIB}
    assert seen[-1].devices[0].used == 2048 * MIB
    assert monitor.latest is seen[-1]
    assert [s.taken_at for s in seen] == sorted(s.taken_at for s in seen)


@pytest.mark.anyio
async def test_backend_errors_are_logged_and_survived(
    caplog: pytest.LogCaptureFixture, sleeper: int
) -> None:
    backend = FlakyBackend(failures=3)
    seen: list[MonitorSnapshot] = []
    done = anyio.Event()

    async def on_sample(snapshot: MonitorSnapshot) -> None:
        seen.append(snapshot)
        if len(seen) == 5:
            done.set()

    monitor = ResourceMonitor(backend, interval=0.01, on_sample=on_sample)
    monitor.register("app", sleeper)
    caplog.set_level(logging.DEBUG, logger="supervisor.gpu_monitor")
    await run_until(monitor, done)

    failed, recovered = seen[0], seen[3]
    assert failed.devices == ()
    assert failed.gpu_error == "GpuBackendError: driver fell over"
    assert failed.children["app"].rss > 0  # RSS still measured
    assert failed.children["app"].vram_by_device == {}
    assert recovered.gpu_error is None
    assert [d.index for d in recovered.devices] == [0]

    records = [r for r in caplog.records if r.name == "supervisor.gpu_monitor"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the same error is not repeated at WARNING each tick
    assert "flaky" in warnings[0].getMessage()
    assert "driver fell over" in warnings[0].getMessage()
    assert any("recovered" in r.getMessage() for r in records if r.levelno == logging.INFO)


@pytest.mark.anyio
async def test_a_failing_callback_does_not_stop_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    done = anyio.Event()

    async def on_sample(snapshot: MonitorSnapshot) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            done.set()
        raise RuntimeError("policy bug")

    monitor = ResourceMonitor(FlakyBackend(failures=0), interval=0.01, on_sample=on_sample)
    await run_until(monitor, done)
    assert any("on_sample callback failed" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_idle_without_backend_does_nothing() -> None:
    calls = 0
    done = anyio.Event()

    async def on_sample(snapshot: MonitorSnapshot) -> None:
        nonlocal calls
        calls += 1
        done.set()

    monitor = ResourceMonitor(None, interval=0.01, on_sample=on_sample)
    with anyio.move_on_after(0.1):
        await monitor.run()
    assert calls == 0
    assert monitor.latest is None

    monitor.register("me", os.getpid())
    await run_until(monitor, done)
    assert monitor.latest is not None
    assert monitor.latest.devices == ()
    assert monitor.latest.gpu_error is None
    assert monitor.latest.children["me"].rss > 0


@pytest.mark.anyio
async def test_refresh_runs_off_the_loop(tmp_path: Path, sleeper: int) -> None:
    path = tmp_path / "nvml.json"
    write_fake(path, sleeper, 512)
    monitor = ResourceMonitor(FakeNvmlBackend(path), interval=60)
    monitor.register("app", sleeper)
    snap = await monitor.refresh()
    assert monitor.latest is snap
    assert snap.children["app"].vram_by_device == {0: 512 * MIB}


@pytest.mark.anyio
async def test_an_admissions_refresh_reads_vram_anew_and_keeps_the_last_host_memory(
    tmp_path: Path, sleeper: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "nvml.json"
    write_fake(path, sleeper, 512)
    monitor = ResourceMonitor(FakeNvmlBackend(path), interval=60)
    monitor.register("app", sleeper)
    first = (await monitor.refresh()).children["app"]
    assert first.rss > 0

    reads: list[list[int]] = []
    monkeypatch.setattr(monitor_module, "pids_memory", lambda pids: reads.append(pids) or 1)
    write_fake(path, sleeper, 2048)
    usage = (await monitor.refresh(host_memory=False)).children["app"]
    assert (usage.rss, usage.vram_by_device, reads) == (first.rss, {0: 2048 * MIB}, [])
    # A child it has no figure for yet is read.
    monitor.register("other", os.getpid())
    other = (await monitor.refresh(host_memory=False)).children["other"]
    assert (other.rss, len(reads)) == (1, 1)
    assert (await monitor.refresh()).children["app"].rss == 1
