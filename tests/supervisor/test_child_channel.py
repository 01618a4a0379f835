"""The supervisor's channel to one real child, below App and Replica: routing by id to each
request's handler, in order, and its failure paths."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from protocol import Load, Log, Message, Result, Run, Setup
from supervisor.environments.environment import child_environment
from supervisor.process.child_channel import ChildChannel, Inbox
from supervisor.process.child_launch import launch_child
from supervisor.process.child_process import ChildProcess

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]
logger = logging.getLogger("test.channel")


class Child:
    def __init__(self, process: ChildProcess, channel: ChildChannel) -> None:
        self.process, self.channel = process, channel
        self._ids = iter(range(1_000_000))

    def new_id(self) -> str:
        return f"r{next(self._ids)}"

    async def call(self, message: Load | Setup | Run) -> Message:
        with self.channel.open_inbox(message.id) as inbox:
            await self.channel.send(message)
            return await last(inbox)


async def last(inbox: Inbox) -> Message:
    messages = [message async for message in inbox]
    return messages[-1]


@pytest.fixture
async def child(apps_dir: Path) -> AsyncIterator[Child]:
    env = child_environment({}, cuda_visible_devices="")
    async with anyio.create_task_group() as tasks:
        process, channel = await launch_child(
            sys.executable, (), env=env, cwd=str(apps_dir), name="t", logger=logger
        )
        tasks.start_soon(channel.read_loop)
        tasks.start_soon(process.read_stderr)
        assert await channel.wait_hello() is not None
        yield Child(process, channel)
        await process.terminate(2.0)
        process.close_pipes()
        tasks.cancel_scope.cancel()


async def load(child: Child, app: Path) -> None:
    assert isinstance(await child.call(Load(child.new_id(), str(app))), Result)
    assert isinstance(await child.call(Setup(child.new_id())), Result)


async def test_a_requests_messages_reach_its_handler_in_order_and_end_with_its_result(
    child: Child, apps_dir: Path
) -> None:
    await load(child, apps_dir / "child_noisy")
    for attempt in range(5):
        handed: list[Message | None] = []
        done = anyio.Event()

        def handler(
            message: Message | None,
            handed: list[Message | None] = handed,
            done: anyio.Event = done,
        ) -> None:
            handed.append(message)
            if message is None or isinstance(message, Result):
                done.set()

        request_id = f"x{attempt}"
        child.channel.open_request(request_id, handler)
        await child.channel.send(Run(request_id, "marker", {"marker": "m", "count": 3, "delay": 0}))
        with anyio.fail_after(30):
            await done.wait()
        assert isinstance(handed[-1], Result)
        assert sum(isinstance(m, Log) for m in handed[:-1]) >= 3
        assert all(isinstance(m, Log) for m in handed[:-1])
    # The handler is dropped with its result: a rerun under the same id reaches nobody.
    seen = len(handed)
    await child.channel.send(Run(request_id, "marker", {"marker": "m", "count": 1, "delay": 0}))
    await anyio.sleep(0.3)
    assert len(handed) == seen


async def test_an_error_while_routing_closes_the_channel_and_ends_every_request(
    child: Child, apps_dir: Path
) -> None:
    await load(child, apps_dir / "plain")

    def broken(message: Message | None) -> None:
        raise RuntimeError("bug in a request handler")

    child.channel.open_request("x", broken)  # raises on its result: the channel closes
    child.channel.open_request("y", broken)  # raises again when told of the close
    others: list[Message | None] = []
    child.channel.open_request("other", others.append)  # is still told, after "y"
    await child.channel.send(Run("x", "run", {"text": "hi"}))
    with anyio.fail_after(30):
        await child.channel.closed.wait()
    assert child.channel.close_reason is not None
    assert "bug in a request handler" in child.channel.close_reason
    assert child.channel.protocol_error is None
    assert others == [None]  # told the channel closed before its ending came
    late: list[Message | None] = []
    child.channel.open_request("late", late.append)
    assert late == [None]


async def test_sending_to_a_dead_child_raises_instead_of_hanging(
    child: Child, apps_dir: Path
) -> None:
    await load(child, apps_dir / "plain")
    child.process.kill()
    await child.process.wait()
    with anyio.fail_after(30):
        await child.channel.closed.wait()
        with pytest.raises((anyio.BrokenResourceError, anyio.ClosedResourceError)):
            for _ in range(100):  # the first writes may still be buffered
                await child.channel.send(Run(child.new_id(), "run", {"text": "x"}))
                await anyio.sleep(0.01)


async def test_a_stopped_child_handles_sigterm_instead_of_waiting_out_the_grace(
    child: Child,
) -> None:
    """A frozen child (SIGSTOP, a debugger, a paused container) is told to continue
    with its SIGTERM: it stops at once rather than being SIGKILLed after the grace."""
    os.killpg(child.process.pid, signal.SIGSTOP)
    status = await child.process.terminate(10.0)
    assert status.signal != signal.SIGKILL, status
