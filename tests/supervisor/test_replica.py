"""``Replica`` against fake children: it starts them, takes requests
on them, and asks the restart policy what follows a death. No process is
started: ``launch_child`` gives a ``FakeProcess`` and its ``FakeChannel``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from fake_child import FakeChannel, FakeProcess, error

from protocol import Cancel, ErrorType, Message, Result, Run
from supervisor import errors
from supervisor.core import replica as replica_module
from supervisor.core import standby as standby_module
from supervisor.core.lifecycle import ReplicaState, VramClaim
from supervisor.core.replica import Replica, ReplicaSpec
from supervisor.core.request import Request
from supervisor.core.request_queue import RequestQueue
from supervisor.core.restart_policy import RestartPolicy
from supervisor.core.running_child import ChildState, Fault
from supervisor.core.standby import StandbyState
from supervisor.process.child_process import ExitStatus

pytestmark = pytest.mark.anyio
GUARD = 10.0
"""Seconds a test may take before it is stuck (a bound, not a measurement)."""


class Children:
    """The fake children the replica launched, newest last; ``on_run`` answers
    each one's requests (default: an empty result at once)."""

    def __init__(self) -> None:
        self.launched: list[tuple[FakeProcess, FakeChannel]] = []
        self.on_run: Callable[[FakeChannel, Message], None] = _answer
        self.silent: set[int] = set()
        """Indexes (in launch order) of children that never answer a load or setup."""

    async def launch(self, *args: Any, **kwargs: Any) -> tuple[FakeProcess, FakeChannel]:
        process = FakeProcess(pid=1000 + len(self.launched))
        channel = FakeChannel(process)
        channel.answer = len(self.launched) not in self.silent
        channel.on_run = lambda message: self.on_run(channel, message)
        self.launched.append((process, channel))
        return process, channel

    @property
    def process(self) -> FakeProcess:
        return self.launched[-1][0]

    @property
    def channel(self) -> FakeChannel:
        return self.launched[-1][1]


def _answer(channel: FakeChannel, message: Message) -> None:
    if isinstance(message, Run):
        channel.reply(Result(message.id, {"ok": True}))


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> Children:
    fakes = Children()
    monkeypatch.setattr(replica_module, "launch_child", fakes.launch)
    return fakes


@pytest.fixture
def queue() -> RequestQueue:
    return RequestQueue(10)


@contextlib.asynccontextmanager
async def running(app_dir: Path, queue: RequestQueue, **options: Any) -> AsyncIterator[Replica]:
    """A replica started (set up with ``{}``) and serving ``queue``, until the block ends."""
    spec = ReplicaSpec(
        app_dir,
        "app",
        cancel_grace=0.05,
        kill_grace=0.05,
        restart_policy=RestartPolicy(max_restarts=2, window=60, cooldown=600),
        **options,
    )
    replica = Replica(spec, 0, ())
    async with anyio.create_task_group() as tasks:
        await tasks.start(replica.run, queue)
        with anyio.fail_after(GUARD):
            await replica.ensure({})
        yield replica
        queue.close()
        tasks.cancel_scope.cancel()


@pytest.fixture
async def replica(
    children: Children, queue: RequestQueue, tmp_path: Path
) -> AsyncIterator[Replica]:
    async with running(tmp_path, queue) as started:
        yield started


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(GUARD):
        while not condition():
            await anyio.sleep(0.005)


async def outcome(request: Request) -> Any:
    with anyio.fail_after(GUARD):
        return await request.result()


async def test_a_start_gives_a_serving_child(replica: Replica, children: Children) -> None:
    assert replica.lifecycle.state is ReplicaState.READY
    assert replica.child is not None and replica.child.state is ChildState.SERVING
    assert [type(m).__name__ for m in children.channel.sent] == ["Load", "Setup"]


async def test_try_take_is_the_childs_check_plus_capacity(replica: Replica) -> None:
    same, other = Request("run", {}, {}), Request("run", {}, {"size": 2})
    assert replica.try_take(other) is None  # other setup values: via ensure
    child = replica.try_take(same)
    assert child is replica.child
    assert replica.try_take(Request("run", {}, {})) is None  # max_concurrency 1: no room
    await replica.serve(same, child)  # gives the capacity back
    assert (await outcome(same)).output == {"ok": True}
    assert replica.try_take(Request("run", {}, {})) is not None


async def test_a_crash_asks_the_restart_policy_and_counts_as_the_apps_fault(
    replica: Replica, children: Children
) -> None:
    first = children.process
    first.exit(ExitStatus(code=1, signal=None))
    await until(
        lambda: replica.lifecycle.state is ReplicaState.READY and children.process is not first
    )
    assert replica.restarts == 1
    assert replica.restarts_by_reason == {"crash": 1}
    assert replica.last_exit is not None and replica.last_exit["fault"] is True
    assert len(replica.crash_times) == 1


async def test_crashes_past_the_policys_limit_fail_the_replica(
    replica: Replica, children: Children
) -> None:
    for _ in range(3):
        current = children.process
        current.exit(ExitStatus(code=1, signal=None))
        await until(
            lambda current=current: (
                replica.lifecycle.state is ReplicaState.FAILED  # type: ignore[misc]
                or (
                    replica.lifecycle.state is ReplicaState.READY
                    and children.process is not current
                )
            )
        )
    assert replica.lifecycle.state is ReplicaState.FAILED
    assert replica.failed is not None and replica.failed.limit == "restarts"
    with pytest.raises(errors.AppFailedError):
        await replica.ensure({})


async def test_a_kill_the_supervisor_ordered_restarts_at_once_uncounted(
    replica: Replica, children: Children
) -> None:
    first = children.process
    assert replica.child is not None
    replica.child.kill(errors.BudgetExceededError("over budget"), Fault.LIMITS)
    await until(
        lambda: replica.lifecycle.state is ReplicaState.READY and children.process is not first
    )
    assert replica.restarts_by_reason == {"budget_exceeded": 1}
    assert replica.crash_times == []
    assert replica.last_exit is not None and replica.last_exit["fault"] is False


async def test_requests_in_flight_on_a_crash_fail_with_the_crash(
    replica: Replica, children: Children
) -> None:
    children.on_run = lambda channel, message: None  # the child never answers
    request = Request("work", {}, {})
    child = replica.try_take(request)
    assert child is not None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(replica.serve, request, child)
        await until(lambda: bool(child.in_flight))
        children.process.exit(ExitStatus(code=None, signal=9))
    with pytest.raises(errors.ChildCrashedError, match="killed by SIGKILL while running 'work'"):
        await outcome(request)


async def test_a_request_whose_child_was_already_gone_runs_on_the_next_one(
    replica: Replica, children: Children
) -> None:
    request = Request("run", {}, {})
    child = replica.try_take(request)
    assert child is not None
    children.channel.closed.set()  # gone, not reaped yet: the send fails
    children.process.exit(ExitStatus(code=1, signal=None))
    with anyio.fail_after(GUARD):
        await replica.serve(request, child)
    assert (await outcome(request)).output == {"ok": True}
    assert len(children.launched) == 2


async def test_a_cancel_reaches_the_child_running_the_request(
    replica: Replica, children: Children
) -> None:
    def on_run(channel: FakeChannel, message: Message) -> None:
        if isinstance(message, Cancel):
            channel.reply(error(message.id, ErrorType.CANCELLED))

    children.on_run = on_run
    request = Request("run", {}, {})
    child = replica.try_take(request)
    assert child is not None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(replica.serve, request, child)
        await until(lambda: bool(child.in_flight))
        assert await replica.cancel(request)
    with pytest.raises(errors.RequestCancelledError):
        await outcome(request)
    assert child.state is ChildState.SERVING


async def test_a_caller_that_goes_away_leaves_its_request_to_the_replica(
    replica: Replica, children: Children
) -> None:
    """The caller's task is cancelled while the child has its request: the replica
    follows it to its end, and only then is the capacity free again."""
    held: list[str] = []
    children.on_run = lambda channel, message: held.append(message.id)  # type: ignore[attr-defined]
    request = Request("run", {}, {})
    child = replica.try_take(request)
    assert child is not None
    with anyio.move_on_after(0.05):
        await replica.serve(request, child)
    assert not request.finished and request.id in child.in_flight
    assert replica.try_take(Request("run", {}, {})) is None  # still taken
    children.channel.reply(Result(held[0], {"late": True}))
    assert (await outcome(request)).output == {"late": True}
    await until(lambda: replica.try_take(Request("run", {}, {})) is not None)


async def test_queued_requests_are_taken_and_served(replica: Replica, queue: RequestQueue) -> None:
    requests = [Request("run", {"i": i}, {}) for i in range(3)]
    for request in requests:
        queue.put(request)
    for request in requests:
        assert (await outcome(request)).output == {"ok": True}


async def test_an_evicted_replica_gives_up_its_vram_and_claims_it_again_to_start(
    replica: Replica, children: Children
) -> None:
    readmissions: list[str] = []

    async def readmit(replica: Replica) -> None:
        readmissions.append(replica.name)
        replica.readmitted()

    replica._readmit = readmit
    assert await replica.evict("room for another app")
    assert replica.claim is VramClaim.EVICTED
    assert replica.status()["evicted"] is True
    assert not replica.holds_vram_reservation
    with anyio.fail_after(GUARD):
        await replica.ensure({})
    assert readmissions == ["app[0]"]
    assert replica.claim is VramClaim.HELD
    assert replica.status()["evicted"] is False


async def test_a_replica_whose_readmission_fails_stays_evicted(
    replica: Replica, children: Children
) -> None:
    async def no_room(replica: Replica) -> None:
        raise errors.AdmissionError("no room")

    replica._readmit = no_room
    assert await replica.evict("room for another app")
    with anyio.fail_after(GUARD), pytest.raises(errors.AdmissionError):
        await replica.ensure({})
    assert replica.claim is VramClaim.EVICTED
    assert replica.lifecycle.state is ReplicaState.UNLOADED


# -- the standby -------------------------------------------------------------------


@pytest.fixture
def no_standby_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standby loads at the start's next checkpoint: once every task waits,
    whatever it was going to load is loaded (``wait_all_tasks_blocked``)."""
    monkeypatch.setattr(standby_module, "STANDBY_DELAY", 0)


async def settled() -> None:
    with anyio.fail_after(GUARD):
        await anyio.wait_all_tasks_blocked()


def is_spare(replica: Replica, process: FakeProcess) -> bool:
    spare = replica.standby.child
    return spare is not None and spare.process is process


@pytest.mark.usefixtures("no_standby_delay")
async def test_a_start_loads_a_standby_that_the_next_start_sets_up(
    children: Children, queue: RequestQueue, tmp_path: Path
) -> None:
    async with running(tmp_path, queue, standby=True) as replica:
        await settled()
        assert replica.standby.state is StandbyState.LOADED
        spare = replica.standby.child
        assert spare is not None and spare.state is ChildState.STANDBY
        assert replica.status()["standby_pid"] == spare.process.app_pid
        first, (_, spare_channel) = children.launched
        assert [type(m).__name__ for m in spare_channel.sent] == ["Load"]  # not set up
        first[0].exit(ExitStatus(code=1, signal=None))
        await until(
            lambda: replica.child is spare and replica.lifecycle.state is ReplicaState.READY
        )
        assert [type(m).__name__ for m in spare_channel.sent] == ["Load", "Setup"]
        assert spare.state is ChildState.SERVING
        await settled()  # and a new standby for the next restart
        assert len(children.launched) == 3 and is_spare(replica, children.process)


@pytest.mark.usefixtures("no_standby_delay")
async def test_a_standby_that_dies_loaded_is_replaced_once_per_start(
    children: Children, queue: RequestQueue, tmp_path: Path
) -> None:
    async with running(tmp_path, queue, standby=True) as replica:
        await settled()
        children.process.exit(ExitStatus(code=None, signal=9))  # the standby
        await settled()
        assert len(children.launched) == 3 and is_spare(replica, children.process)
        children.process.exit(ExitStatus(code=None, signal=9))  # its replacement
        await settled()
        assert len(children.launched) == 3
        assert replica.standby.state is StandbyState.EMPTY
        assert replica.status()["standby_pid"] is None
        # A start (the current child crashed) may replace one again.
        current, _ = children.launched[0]
        assert replica.child is not None and replica.child.process is current
        current.exit(ExitStatus(code=1, signal=None))
        await until(lambda: len(children.launched) == 5 and is_spare(replica, children.process))
        children.process.exit(ExitStatus(code=None, signal=9))
        await settled()
        assert len(children.launched) == 6 and is_spare(replica, children.process)


@pytest.mark.usefixtures("no_standby_delay")
async def test_a_standby_that_dies_while_loading_is_not_replaced(
    children: Children, queue: RequestQueue, tmp_path: Path
) -> None:
    children.silent = {1}  # the standby's load is never answered
    async with running(tmp_path, queue, standby=True) as replica:
        await settled()
        assert len(children.launched) == 2
        assert replica.standby.state is StandbyState.LOADING
        children.process.exit(ExitStatus(code=None, signal=9))
        await settled()
        assert len(children.launched) == 2
        assert replica.standby.state is StandbyState.EMPTY
        assert replica.lifecycle.state is ReplicaState.READY  # the replica serves on
        request = Request("run", {}, {})
        queue.put(request)
        assert (await outcome(request)).output == {"ok": True}


@pytest.mark.usefixtures("no_standby_delay")
@pytest.mark.parametrize("loading", [False, True])
async def test_an_eviction_drops_the_standby_loaded_or_loading(
    children: Children, queue: RequestQueue, tmp_path: Path, loading: bool
) -> None:
    if loading:
        children.silent = {1}
    async with running(tmp_path, queue, standby=True) as replica:
        await settled()
        spare = children.process
        assert await replica.evict("room for another app")
        await settled()
        assert spare.terminated == 1 and spare.exit_status is not None
        assert replica.standby.state is StandbyState.EMPTY
        assert len(children.launched) == 2  # none loaded in its place


def test_the_standby_table_lists_every_state() -> None:
    assert set(standby_module.TRANSITIONS) == set(StandbyState)


async def test_a_stop_while_new_setup_values_are_checked_ends_the_start_cleanly(
    replica: Replica, children: Children, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop does not wait for the replica's lock: one that comes while the child
    checks new setup values must not be followed by retiring the child again."""
    checked = replica._check_config

    async def check_then_stop(child: Any, config: dict[str, Any]) -> Any:
        outcome = await checked(child, config)
        stopping.start_soon(replica.stop)
        await until(lambda: replica.stopping)
        return outcome

    monkeypatch.setattr(replica, "_check_config", check_then_stop)
    async with anyio.create_task_group() as stopping:
        with pytest.raises(errors.AppStoppedError), anyio.fail_after(GUARD):
            await replica.ensure({"size": 2})
    assert replica.lifecycle.state is ReplicaState.STOPPED
    assert [type(m).__name__ for m in children.channel.sent] == ["Load", "Setup", "Check", "Unload"]
