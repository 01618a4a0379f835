"""Every process an app starts ends with its child, however it detached.

The security test app starts real detached processes (``setsid`` and a double
fork, or ``Popen(start_new_session=True)``) that would sleep for ten minutes;
each test ends the child one way (its SIGKILL, its own exit, the app's stop, the
supervisor's SIGKILL) and polls until none of them runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from sup_helpers import (
    WaitGone,
    describe_process,
    make_supervisor,
    only_pid,
    outcome,
    wait_for,
)

from supervisor import errors as E
from supervisor.process import child_process
from supervisor.process.cgroups import CgroupHost
from supervisor.process.child_process import ChildProcess
from supervisor.process.process_memory import tree_pids

APP = Path(__file__).resolve().parents[1] / "apps" / "security"
MEM_APP = Path(__file__).resolve().parents[1] / "apps" / "mem_gpu"
CRASHY_APP = Path(__file__).resolve().parents[1] / "apps" / "sup_crashy"
MIB = 2**20


def _cgroups_here() -> CgroupHost | None:
    host = CgroupHost.probe()
    if host is not None:
        host.close()
    return host


CGROUPS = _cgroups_here()
needs_cgroups = pytest.mark.skipif(
    CGROUPS is None,
    reason="this process cannot make cgroups here (needs root and a writable hierarchy)",
)
MECHANISMS = [
    pytest.param("subreaper", id="subreaper"),
    pytest.param("cgroup", id="cgroup", marks=needs_cgroups),
]
HOWS = ["setsid", "session"]
GONE_WITHIN = 10.0
"""Generous: the bound is for a loaded machine, not a promise of speed."""


async def _spawn(app: Any) -> list[int]:
    pids: list[int] = []
    for how in HOWS:
        pids += (await app.run({"how": how}, function="spawn"))["pids"]
    return pids


def _kill_quietly(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def spawned() -> Iterator[list[int]]:
    """Pids to kill after the test, whatever it found."""
    pids: list[int] = []
    yield pids
    _kill_quietly(pids)


@pytest.mark.anyio
@pytest.mark.parametrize("containment", MECHANISMS)
async def test_detached_processes_die_with_a_sigkilled_child(
    spawned: list[int], wait_gone: WaitGone, containment: str
) -> None:
    async with make_supervisor(containment=containment) as sup:
        assert sup.status()["containment"]["mechanism"] == containment
        app = await sup.start(APP)
        spawned += await _spawn(app)
        assert wait_gone(spawned, timeout=0.5) == spawned, "they run before the kill"
        child = app.status()["pids"][0]
        os.kill(child, signal.SIGKILL)
        assert wait_gone(spawned, timeout=GONE_WITHIN) == []
        await wait_for(lambda: app.status()["state"] == "ready" and app.status()["pids"] != [child])


@pytest.mark.anyio
@pytest.mark.parametrize("containment", MECHANISMS)
async def test_detached_processes_die_when_the_app_stops(
    spawned: list[int], wait_gone: WaitGone, containment: str
) -> None:
    async with make_supervisor(containment=containment) as sup:
        app = await sup.start(APP)
        spawned += await _spawn(app)
        await app.stop()
        assert wait_gone(spawned, timeout=GONE_WITHIN) == []


@pytest.mark.anyio
@pytest.mark.parametrize("containment", MECHANISMS)
async def test_a_childs_tree_holds_what_it_started_the_child_first(
    spawned: list[int], containment: str
) -> None:
    """What the monitor counts a child's VRAM and RAM over: from its cgroup where it
    has one, the same processes as a walk of the process table finds."""
    async with make_supervisor(containment=containment) as sup:
        app = await sup.start(APP)
        spawned += await _spawn(app)
        child = app.replicas[0].child
        assert child is not None
        listed = child.process.tree_pids()
        assert listed[0] == child.process.pid
        assert set(spawned) | {child.process.app_pid} <= set(listed)
        assert sorted(listed) == sorted(tree_pids(child.process.pid))
        await app.stop()
        assert child.process.tree_pids() == []


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import anyio
    from supervisor import Supervisor

    async def main() -> None:
        async with Supervisor(gpu_backend=None, pool_size=0, containment=sys.argv[2]) as sup:
            app = await sup.start(sys.argv[1])
            pids = []
            for how in ("setsid", "session"):
                pids += (await app.run({"how": how}, function="spawn"))["pids"]
            print(json.dumps({"pids": pids, "children": app.status()["pids"]}), flush=True)
            await anyio.sleep(600)

    anyio.run(main)
    """
)


@pytest.mark.parametrize("containment", MECHANISMS)
def test_detached_processes_die_with_a_sigkilled_supervisor(
    tmp_path: Path, spawned: list[int], wait_gone: WaitGone, containment: str
) -> None:
    script = tmp_path / "supervise.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(APP), containment], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        spawned += info["pids"] + info["children"]
        assert wait_gone(spawned, timeout=0.5) == spawned
        proc.kill()
        proc.wait()
        left = wait_gone(spawned, timeout=GONE_WITHIN)
        assert left == [], [describe_process(pid) for pid in spawned]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.anyio
@pytest.mark.parametrize("containment", MECHANISMS)
async def test_a_child_that_exits_by_itself_takes_its_detached_processes(
    spawned: list[int], wait_gone: WaitGone, containment: str
) -> None:
    async with make_supervisor(containment=containment) as sup:
        app = await sup.start(APP)
        spawned += await _spawn(app)
        with pytest.raises(E.ChildCrashedError):
            await app.run({"how": "exit"}, function="spawn")
        assert wait_gone(spawned, timeout=GONE_WITHIN) == []


@needs_cgroups
@pytest.mark.anyio
async def test_a_kill_from_outside_is_not_taken_for_an_oom_kill_elsewhere_on_the_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An OOM kill of another process while the child lives raises the host's count,
    not the child's cgroup's: a child killed by someone else was not OOM-killed. (A
    parallel test's OOM kill made a SIGKILL test fail this way.)"""
    inside = tmp_path / "inside"
    async with make_supervisor(containment="cgroup") as sup:
        app = await sup.start(CRASHY_APP)
        if app.status()["replicas"][0].get("cgroup_memory") is None:
            pytest.skip("the child's cgroup has no memory controller here")
        pid = only_pid(app)
        request = app.submit({"how": "sleep", "seconds": 60, "started": str(inside)})
        await wait_for(inside.exists)
        host_count = child_process.oom_kill_count()
        monkeypatch.setattr(child_process, "oom_kill_count", lambda: host_count + 1)
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(30), pytest.raises(E.ChildCrashedError) as caught:
            await outcome(request)
        assert caught.value.details["signal"] == "SIGKILL"
        assert caught.value.details["oom_killed"] is False


@needs_cgroups
@pytest.mark.anyio
async def test_the_ram_budget_is_a_hard_limit_in_a_cgroup() -> None:
    """The kernel stops the allocation at the budget, long before the sampler's grace."""
    # A pooled child: it is moved into its own cgroup when it is handed the app.
    async with make_supervisor(containment="cgroup", budget_grace=600, pool_size=1) as sup:
        app = await sup.start(MEM_APP, ram_budget=200 * MIB)
        child = app.status()["pids"][0]
        assert "/appvisor-" in Path(f"/proc/{child}/cgroup").read_text()
        exact = app.status()["replicas"][0]["cgroup_memory"]
        assert exact["limit"] == 200 * MIB and 0 < exact["current"] < 200 * MIB
        with pytest.raises(E.BudgetExceededError) as caught:
            await app.run({"hold_mib": 400})
        assert caught.value.details["oom_killed"] is True
        assert caught.value.details["limit"] == 200 * MIB
        assert "hard limit" in caught.value.message


@needs_cgroups
@pytest.mark.anyio
async def test_two_supervisors_in_one_process_keep_their_own_groups(
    spawned: list[int], wait_gone: WaitGone
) -> None:
    async with make_supervisor(containment="cgroup") as first:
        app = await first.start(APP)
        spawned += await _spawn(app)
        async with make_supervisor(containment="cgroup") as second:
            await second.start(APP, name="second")
        assert wait_gone(spawned, timeout=0.5) == spawned, "the second one's exit spared them"
        assert (await app.run({"data": {"a": 1}}))["data"] == {"a": 1}


FORK_LATER = """
import os, sys, time
time.sleep(0.5)
for _ in range(3):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(1, f"{os.getpid()}\\n".encode())  # one write: lines do not interleave
            time.sleep(600)
        os._exit(0)
time.sleep(600)
"""


@needs_cgroups
def test_a_v1_group_without_cgroup_kill_is_emptied_member_by_member(
    spawned: list[int], wait_gone: WaitGone
) -> None:
    host = CgroupHost.probe()
    assert host is not None
    v1 = [h for h in host.hierarchies if h.kind != "v2"]
    if not v1:
        host.close()
        pytest.skip("no usable cgroup v1 hierarchy here")
    host.hierarchies = v1
    try:
        group = host.create("v1-test")
        proc = subprocess.Popen(
            [sys.executable, "-c", FORK_LATER], stdout=subprocess.PIPE, text=True
        )
        group.add(proc.pid)
        assert proc.stdout is not None
        spawned += [proc.pid, *(int(proc.stdout.readline()) for _ in range(3))]
        assert set(spawned) <= set(group.pids())
        assert group.remove()
        proc.wait()
        proc.stdout.close()
        assert wait_gone(spawned, timeout=GONE_WITHIN) == []
    finally:
        host.close()


class SlowCgroup:
    """A cgroup whose move blocks until the event loop has run (``loop_ran``)."""

    def __init__(self) -> None:
        self.entered, self.loop_ran = threading.Event(), threading.Event()
        self.added: list[int] = []
        self.saw_the_loop = False

    def add(self, pid: int) -> None:
        self.entered.set()
        self.saw_the_loop = self.loop_ran.wait(GONE_WITHIN)  # only the loop sets it
        self.added.append(pid)

    async def wait_entered(self) -> None:
        while not self.entered.is_set():
            await anyio.sleep(0.001)


@pytest.mark.anyio
async def test_a_slow_cgroup_migration_does_not_hold_up_the_event_loop() -> None:
    """A move into a cgroup can wait out an RCU grace period in the kernel: meanwhile
    the loop must go on (a swap's eviction runs beside its new child's move)."""
    cgroup = SlowCgroup()
    child = ChildProcess(SimpleNamespace(pid=4242), "slow", cgroup=cgroup)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(child.enter_cgroup)
        await cgroup.wait_entered()
        cgroup.loop_ran.set()
    assert cgroup.saw_the_loop
    assert cgroup.added == [4242]


@pytest.mark.anyio
async def test_a_start_cancelled_as_the_child_is_moved_still_moves_and_hands_it_over() -> None:
    """Whoever spawned the child owns it only once the move returns: a cancellation
    raised there instead would leave the child unmoved (waiting to be moved, as
    ``child.reaper`` does) and running with no owner."""
    cgroup = SlowCgroup()
    cgroup.loop_ran.set()
    child = ChildProcess(SimpleNamespace(pid=4242), "slow", cgroup=cgroup)  # type: ignore[arg-type]
    handed_over: list[bool] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        await child.enter_cgroup()
        handed_over.append(True)  # no checkpoint before: runs although cancelled
    assert cgroup.added == [4242]
    assert handed_over == [True]


@contextlib.contextmanager
def _real_or_kernel_like_cgroup() -> Iterator[Any]:
    """A real cgroup where this process can make one; elsewhere a stand-in that,
    like the kernel, refuses a pid that no longer exists with ESRCH."""
    host = CgroupHost.probe()
    if host is None:

        class KernelLike:
            def add(self, pid: int) -> None:
                os.kill(pid, 0)  # ProcessLookupError once the pid is reaped

        yield KernelLike()
        return
    try:
        cgroup = host.create("gone")
        try:
            yield cgroup
        finally:
            cgroup.remove()
    finally:
        host.close()


@pytest.mark.anyio
async def test_a_child_that_exited_before_its_move_is_handed_over_not_an_error() -> None:
    """A child that dies at once (a broken interpreter, a ``sitecustomize`` that
    exits) is reaped by asyncio's watcher before the thread moves it: the move
    fails with ESRCH. The death is the handshake's to report, with its exit code
    and stderr; failing the start with a bare ``ProcessLookupError`` instead hid
    both (seen in CI)."""
    process = await anyio.open_process([sys.executable, "-c", "raise SystemExit(7)"])
    assert await process.wait() == 7  # reaped: the pid is gone
    with _real_or_kernel_like_cgroup() as cgroup:
        child = ChildProcess(process, "gone", cgroup=cgroup)
        await child.enter_cgroup(with_descendants=True)
    assert process.returncode == 7
