"""A child process and its channel, faked in memory: no process, no pipe.

``FakeChannel`` has the part of ``ChildChannel``'s API that the running child
and the replica use; what the supervisor sends is recorded in ``sent``, and a
test answers with ``reply`` (or lets ``answer`` answer load, setup and check
requests, and runs with ``on_run``); an ``unload`` ends the child.
``FakeProcess`` ends when told (``exit``), when killed or when terminated, and
closes its channel as a real child's stdout closes when it dies.
``ScriptedChild`` stands in for ``launch_child``: its one child answers runs or
holds them, and answers a cancel of a held run as a real child does;
``serving_app`` serves an ``App`` of one replica on it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

from protocol import (
    Cancel,
    Check,
    Error,
    ErrorInfo,
    ErrorType,
    Hello,
    Load,
    Message,
    Result,
    Run,
    Setup,
    Unload,
)
from supervisor.core.app import App
from supervisor.core.replica import Replica, ReplicaSpec
from supervisor.process.child_channel import ChildChannel
from supervisor.process.child_process import ExitStatus

Handler = Callable[[Message | None], None]


class FakeProcess:
    def __init__(self, pid: int = 4242) -> None:
        self.pid = self.app_pid = pid
        self.name = "fake"
        self.start = "spawn"
        self.mask: Any = None
        self.cgroup = None
        self.memory_limit: int | None = None
        self.stderr_tail: deque[str] = deque()
        self.exit_status: ExitStatus | None = None
        self.terminated = 0
        self.killed = 0
        self.channel: FakeChannel | None = None
        self._exited = anyio.Event()

    def exit(self, status: ExitStatus) -> None:
        """The child ends: its channel closes (its stdout ends), then it can be reaped."""
        if self.exit_status is None:
            self.exit_status = status
            self._exited.set()
        if self.channel is not None:
            self.channel.close()

    async def wait(self) -> ExitStatus:
        await self._exited.wait()
        assert self.exit_status is not None
        return self.exit_status

    def kill(self) -> None:
        self.killed += 1
        self.exit(ExitStatus(code=None, signal=9))

    async def terminate(self, grace: float) -> ExitStatus:
        self.terminated += 1
        self.exit(ExitStatus(code=None, signal=15))
        return await self.wait()

    def close_pipes(self) -> None:
        pass

    async def read_stderr(self) -> None:
        pass

    def memory_usage(self) -> int | None:
        return None


class FakeChannel:
    def __init__(self, process: FakeProcess, *, features: tuple[str, ...] = ("check",)) -> None:
        self.process = process
        process.channel = self
        self.closed = anyio.Event()
        self.protocol_error: str | None = None
        self.fatal_error: Error | None = None
        self.hello: Hello | None = Hello(1, process.pid, "fake", features=list(features))
        self.logger: Any = None
        self.mask: Any = None
        self.sent: list[Message] = []
        self.handlers: dict[str, Handler] = {}
        self.pong = True
        self.on_run: Callable[[Message], None] | None = None
        """Called with each request sent (run, cancel); a test answers with ``reply``."""
        self.answer = True
        """Answer load, setup and check requests with an empty result."""

    async def read_loop(self) -> None:
        await self.closed.wait()

    async def wait_hello(self) -> Hello | None:
        return self.hello

    def open_request(self, request_id: str, handler: Handler) -> None:
        if self.closed.is_set():
            handler(None)
        else:
            self.handlers[request_id] = handler

    open_inbox = ChildChannel.open_inbox  # the real one, on this fake's open_request

    async def send(self, message: Message) -> None:
        if self.closed.is_set():
            raise anyio.BrokenResourceError("the fake child is gone")
        self.sent.append(message)
        if isinstance(message, Unload):
            self.process.exit(ExitStatus(code=0, signal=None))
        elif isinstance(message, (Load, Setup, Check)):
            if self.answer:
                self.reply(Result(message.id, {} if isinstance(message, Load) else None))
        elif self.on_run is not None:
            self.on_run(message)

    async def ping(self, timeout: float) -> bool:
        return self.pong and not self.closed.is_set()

    def reply(self, message: Message) -> None:
        """The child sends ``message`` about one of its requests."""
        request_id = getattr(message, "id", None)
        handler = self.handlers.get(request_id) if isinstance(request_id, str) else None
        if handler is None:
            return
        if isinstance(message, (Result, Error)):
            del self.handlers[request_id]  # type: ignore[arg-type]
        handler(message)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        handlers, self.handlers = self.handlers, {}
        for handler in handlers.values():
            handler(None)


def error(request_id: str, kind: ErrorType, message: str = "no") -> Error:
    return Error(request_id, ErrorInfo(kind, message))


class ScriptedChild:
    """The one fake child of a replica (``launch`` replaces ``launch_child``); it answers
    runs when ``answering``, else holds them until they are cancelled."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.answering = True
        self.channel: FakeChannel | None = None

    async def launch(self, *args: object, **kwargs: object) -> tuple[FakeProcess, FakeChannel]:
        process = FakeProcess()
        channel = self.channel = FakeChannel(process)
        channel.on_run = self.on_run
        return process, channel

    def on_run(self, message: Message) -> None:
        assert self.channel is not None
        if isinstance(message, Run):
            if self.answering:
                self.channel.reply(Result(message.id, {"echo": message.input}))
            else:
                self.held.append(message.id)
        elif isinstance(message, Cancel) and message.id in self.held:
            self.held.remove(message.id)
            self.channel.reply(error(message.id, ErrorType.CANCELLED, "cancelled"))

    def cancelled(self) -> list[str]:
        """The ids of the requests the supervisor sent a cancel for."""
        assert self.channel is not None
        return [m.id for m in self.channel.sent if isinstance(m, Cancel)]


@contextlib.asynccontextmanager
async def serving_app(directory: Path, guard: float = 10.0) -> AsyncIterator[App]:
    """An app of one replica, its child started, serving until the block ends."""
    replica = Replica(ReplicaSpec(directory, "app", kill_grace=0.05), 0, ())
    app = App("app", directory, [replica], queue_size=1, setup={}, run_timeout=None)
    async with anyio.create_task_group() as tasks:
        await tasks.start(app.serve)
        with anyio.fail_after(guard):
            await replica.ensure({})
        yield app
        await app.stop()
