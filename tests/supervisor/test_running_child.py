"""The running child against a fake channel: its state table, the one "can it take
this request" check, its kill (reason and fault), its requests' ends (result,
error, crash, timeout, cancel). No process is started."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from fake_child import FakeChannel, FakeProcess, error

from protocol import Cancel, ErrorType, Log, Message, Partial, Result, Run
from supervisor import errors
from supervisor.core.lifecycle import IllegalTransition
from supervisor.core.request import Request
from supervisor.core.running_child import (
    TRANSITIONS,
    ChildLimits,
    ChildState,
    Delivery,
    Fault,
    Refusal,
    RunningChild,
)
from supervisor.events import LogEvent, PartialEvent, ResultEvent
from supervisor.process.child_process import ExitStatus

pytestmark = pytest.mark.anyio
GUARD = 10.0
"""Seconds a test may take before it is stuck (a bound, not a measurement)."""


@pytest.fixture
async def tasks() -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as group:
        yield group
        group.cancel_scope.cancel()


def make_child(
    tasks: anyio.abc.TaskGroup, key: str = "{}", **limits: Any
) -> tuple[RunningChild, FakeChannel, FakeProcess]:
    process = FakeProcess()
    channel = FakeChannel(process)
    child = RunningChild(
        process,  # type: ignore[arg-type]
        channel,  # type: ignore[arg-type]
        {},
        key,
        tasks=tasks,
        name="app[0]",
        limits=ChildLimits(**{"cancel_grace": 0.05, "kill_grace": 0.05, **limits}),
        metadata={"app_id": "app"},
    )
    return child, channel, process


def serving(
    tasks: anyio.abc.TaskGroup, **limits: Any
) -> tuple[RunningChild, FakeChannel, FakeProcess]:
    child, channel, process = make_child(tasks, **limits)
    child.serve()
    return child, channel, process


async def run(child: RunningChild, request: Request) -> Delivery:
    """What the replica does with a request it gives the child."""
    entry = child.enter(request)
    try:
        delivery = await child.send(entry)
        if delivery is Delivery.SENT:
            await child.follow(entry)
        return delivery
    finally:
        child.leave(entry)


async def outcome(request: Request) -> Any:
    with anyio.fail_after(GUARD):
        return await request.result()


# -- the state table ------------------------------------------------------------------


def test_every_state_has_a_row_and_dead_is_final() -> None:
    assert set(TRANSITIONS) == set(ChildState)
    assert TRANSITIONS[ChildState.DEAD] == frozenset()
    for state in ChildState:
        if state is not ChildState.DEAD:
            assert ChildState.DEAD in TRANSITIONS[state]


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((), ChildState.DRAINING),
        ((ChildState.SERVING,), ChildState.STANDBY),
        ((ChildState.SERVING,), ChildState.STARTING),
        ((ChildState.STANDBY,), ChildState.SERVING),
        ((ChildState.RETIRING,), ChildState.SERVING),
        ((ChildState.KILLED,), ChildState.RETIRING),
        ((ChildState.DEAD,), ChildState.SERVING),
    ],
)
async def test_illegal_transitions_raise_naming_both_states(
    tasks: anyio.abc.TaskGroup, path: tuple[ChildState, ...], illegal: ChildState
) -> None:
    child, _, _ = make_child(tasks)
    for state in path:
        child.to(state)
    with pytest.raises(IllegalTransition, match=f"{child.state.value} -> {illegal.value}"):
        child.to(illegal)


async def test_transitions_are_logged(
    tasks: anyio.abc.TaskGroup, caplog: pytest.LogCaptureFixture
) -> None:
    child, _, _ = make_child(tasks)
    with caplog.at_level(logging.DEBUG, logger="supervisor.child"):
        child.to(ChildState.STANDBY, "loaded")
    assert "app[0]: child pid 4242 starting -> standby (loaded)" in caplog.text


async def test_a_standby_taken_by_a_start_gets_the_starts_setup_values(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, _, _ = make_child(tasks, key="")
    child.stand_by()
    assert child.take_standby({"size": 2}, '{"size": 2}')
    assert child.state is ChildState.STARTING
    assert child.config_key == '{"size": 2}'
    assert not child.take_standby({}, "{}")  # not a standby any more


# -- can it take this request? ---------------------------------------------------------


async def test_only_a_serving_child_with_the_same_setup_takes_a_request(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, _, _ = make_child(tasks)
    assert child.refusal("{}") is Refusal.NOT_SERVING
    child.serve()
    assert child.refusal("{}") is None
    assert child.refusal('{"other": 1}') is Refusal.OTHER_SETUP
    child.unanswered_since = -1e9  # a heartbeat long unanswered
    assert child.refusal("{}") is Refusal.SUSPECT
    child.unanswered_since = None
    child.kill(errors.ChildCrashedError("gone"), Fault.APP)
    assert child.refusal("{}") is Refusal.NOT_SERVING


async def test_a_draining_child_takes_nothing_until_its_requests_are_done(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, channel, _ = serving(tasks)
    request = Request("run", {}, {})
    entry = child.enter(request)
    drained = anyio.Event()

    async def drain() -> None:
        await child.drain()
        drained.set()

    tasks.start_soon(drain)
    await anyio.wait_all_tasks_blocked()
    assert child.refusal("{}") is Refusal.DRAINING
    channel.reply(Result(request.id, {}))
    child.leave(entry)
    with anyio.fail_after(GUARD):
        await drained.wait()
    assert child.state is ChildState.SERVING


async def test_a_drain_cut_short_by_a_kill_does_not_serve_again(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, _, _ = serving(tasks)
    entry = child.enter(Request("run", {}, {}))

    async def kill_then_leave() -> None:
        await anyio.wait_all_tasks_blocked()
        child.kill(errors.ChildCrashedError("gone"), Fault.APP)
        child.leave(entry)

    tasks.start_soon(kill_then_leave)
    with anyio.fail_after(GUARD):
        await child.drain()
    assert child.state is ChildState.KILLED


# -- its kill ------------------------------------------------------------------------


async def test_a_kill_records_reason_fault_and_culprit_once(tasks: anyio.abc.TaskGroup) -> None:
    child, _, process = serving(tasks)
    reason = errors.RequestTimeoutError("too slow")
    assert child.kill(reason, Fault.CALLER, culprit="r1")
    assert not child.kill(errors.ChildCrashedError("later"), Fault.APP)
    assert child.state is ChildState.KILLED
    assert child.killed is not None
    assert (child.killed.reason, child.killed.fault, child.killed.culprit) == (
        reason,
        Fault.CALLER,
        "r1",
    )
    with anyio.fail_after(GUARD):
        status = await child.reaped()
    assert process.terminated == 1
    assert status.signal == 15
    assert child.dead and child.state is ChildState.DEAD


async def test_a_child_that_broke_the_protocol_is_killed_at_once_for_its_own_fault(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, channel, process = serving(tasks)
    channel.protocol_error = "a frame too large"
    channel.close()
    with anyio.fail_after(GUARD):
        await child.reaped()
    assert process.killed == 1
    assert child.killed is not None
    assert child.killed.fault is Fault.APP
    assert isinstance(child.killed.reason, errors.ProtocolViolationError)


async def test_retiring_is_not_a_kill(tasks: anyio.abc.TaskGroup) -> None:
    child, _, process = serving(tasks)
    child.retire()
    child.retire()  # twice is fine
    process.exit(ExitStatus(code=0, signal=None))
    with anyio.fail_after(GUARD):
        await child.reaped()
    assert child.killed is None


# -- its requests ------------------------------------------------------------------------


async def test_a_request_gets_its_events_then_its_result(tasks: anyio.abc.TaskGroup) -> None:
    child, channel, _ = serving(tasks)
    busy: list[bool] = []
    child._on_busy = busy.append

    def answer(message: Message) -> None:
        assert isinstance(message, Run)
        assert message.metadata == {"app_id": "app", "mine": 1}
        channel.reply(Log(message.id, "stdout", "hi"))
        channel.reply(Partial(message.id, {"n": 1}))
        channel.reply(Result(message.id, {"n": 2}))

    channel.on_run = answer
    request = Request("run", {}, {}, metadata={"mine": 1})
    assert await run(child, request) is Delivery.SENT
    items = [await request.next_item() for _ in range(3)]
    assert isinstance(items[0], LogEvent) and items[0].message == "hi"
    assert isinstance(items[1], PartialEvent) and items[1].output == {"n": 1}
    assert isinstance(items[2], ResultEvent) and items[2].output == {"n": 2}
    assert not child.in_flight
    assert busy == [True, False]


async def test_an_app_error_fails_the_request_and_the_child_serves_on(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, channel, _ = serving(tasks)
    channel.on_run = lambda m: channel.reply(error(m.id, ErrorType.APP_EXCEPTION))  # type: ignore[attr-defined]
    request = Request("run", {}, {})
    await run(child, request)
    with pytest.raises(errors.AppExceptionError):
        await outcome(request)
    assert child.state is ChildState.SERVING


async def test_a_gpu_out_of_memory_error_gets_the_child_killed_for_the_limits(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, channel, _ = serving(tasks)
    channel.on_run = lambda m: channel.reply(error(m.id, ErrorType.OUT_OF_MEMORY))  # type: ignore[attr-defined]
    request = Request("run", {}, {})
    await run(child, request)
    with pytest.raises(errors.OutOfMemoryError):
        await outcome(request)
    assert child.killed is not None and child.killed.fault is Fault.LIMITS


async def test_a_crash_fails_the_request_in_flight_with_the_exit_status(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, channel, process = serving(tasks)
    process.stderr_tail.append("Segmentation fault")
    channel.on_run = lambda m: process.exit(ExitStatus(code=None, signal=11))
    tasks.start_soon(child.reaped)
    request = Request("work", {}, {})
    with anyio.fail_after(GUARD):
        await run(child, request)
    with pytest.raises(
        errors.ChildCrashedError, match="killed by SIGSEGV while running 'work'"
    ) as caught:
        await outcome(request)
    assert caught.value.details["stderr"] == "Segmentation fault"
    assert caught.value.details["signal"] == "SIGSEGV"


async def test_a_killed_childs_requests_are_told_why(tasks: anyio.abc.TaskGroup) -> None:
    child, channel, _ = serving(tasks)
    tasks.start_soon(child.reaped)
    budget = errors.BudgetExceededError("over its RAM budget", budget="ram")
    channel.on_run = lambda m: child.kill(budget, Fault.LIMITS)
    request = Request("run", {}, {})
    with anyio.fail_after(GUARD):
        await run(child, request)
    with pytest.raises(errors.BudgetExceededError, match="over its RAM budget") as caught:
        await outcome(request)
    assert caught.value.details["budget"] == "ram"


async def test_a_request_that_never_reached_a_dead_child_is_undelivered(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, _, process = serving(tasks)
    tasks.start_soon(child.reaped)
    process.exit(ExitStatus(code=1, signal=None))
    request = Request("run", {}, {})
    with anyio.fail_after(GUARD):
        assert await run(child, request) is Delivery.UNDELIVERED
    assert request.started is None and not request.finished


async def test_a_timeout_cancels_and_kills_a_child_that_ignores_the_cancel(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, channel, _ = serving(tasks, run_timeout=0.05)
    tasks.start_soon(child.reaped)
    request = Request("run", {}, {})
    with anyio.fail_after(GUARD):
        await run(child, request)
    with pytest.raises(errors.RequestTimeoutError):
        await outcome(request)
    assert any(isinstance(m, Cancel) and m.id == request.id for m in channel.sent)
    assert child.killed is not None
    assert (child.killed.fault, child.killed.culprit) == (Fault.CALLER, request.id)


async def test_a_timeout_honoured_in_time_leaves_the_child_serving(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, channel, _ = serving(tasks, run_timeout=0.05, cancel_grace=GUARD)

    def on_message(message: Message) -> None:
        if isinstance(message, Cancel):
            channel.reply(error(message.id, ErrorType.CANCELLED))

    channel.on_run = on_message
    request = Request("run", {}, {})
    with anyio.fail_after(GUARD):
        await run(child, request)
    with pytest.raises(errors.RequestTimeoutError):
        await outcome(request)
    assert child.killed is None and child.state is ChildState.SERVING


async def test_a_cancel_the_child_honours_fails_the_request_as_cancelled(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, channel, _ = serving(tasks, cancel_grace=GUARD)

    def on_message(message: Message) -> None:
        if isinstance(message, Cancel):
            channel.reply(error(message.id, ErrorType.CANCELLED))

    channel.on_run = on_message
    request = Request("run", {}, {})
    tasks.start_soon(run, child, request)
    await anyio.wait_all_tasks_blocked()
    assert await child.cancel(request.id)
    with pytest.raises(errors.RequestCancelledError):
        await outcome(request)
    assert child.killed is None
    assert not await child.cancel("unknown")


async def test_a_cancel_the_child_ignores_kills_it_and_the_request_is_told(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, _channel, _ = serving(tasks)
    tasks.start_soon(child.reaped)
    request = Request("run", {}, {})
    tasks.start_soon(run, child, request)
    await anyio.wait_all_tasks_blocked()
    await child.cancel(request.id)
    with pytest.raises(errors.RequestCancelledError):
        await outcome(request)
    assert child.killed is not None
    assert (child.killed.fault, child.killed.culprit) == (Fault.CALLER, request.id)


async def test_a_request_killed_for_another_is_told_the_child_was_killed_under_it(
    tasks: anyio.abc.TaskGroup,
) -> None:
    child, _channel, _ = serving(tasks)
    tasks.start_soon(child.reaped)
    other = Request("run", {}, {})
    mine = Request("run", {}, {})
    tasks.start_soon(run, child, other)
    tasks.start_soon(run, child, mine)
    await anyio.wait_all_tasks_blocked()
    child.kill(errors.RequestCancelledError("the request was cancelled"), Fault.CALLER, other.id)
    with pytest.raises(errors.ChildCrashedError, match="killed while running this request"):
        await outcome(mine)
    with pytest.raises(errors.RequestCancelledError):
        await outcome(other)
