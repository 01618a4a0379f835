"""One request on its way through the supervisor.

The caller holds the receiving end of ``events``; the slot that runs the
request sends into the other end. Its buffer is unbounded so that a slow
caller never stalls a child. The last item is always either a
``ResultEvent`` or a ``SupervisorError``, and ``finished`` guards that only one
such ending is ever delivered, whoever gets there first (the child's answer, a
timeout, a cancel, a crash).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import SupervisorError
from .events import Event, ResultEvent

Item = Event | SupervisorError


def config_key(config: dict[str, Any]) -> str:
    """A canonical form of setup values: equal configs, equal keys."""
    return json.dumps(config, sort_keys=True, default=str)


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(eq=False)
class Request:
    function: str
    input: dict[str, Any]
    config: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    id: str = field(default_factory=new_request_id)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: bool = False
    cancel_sent: bool = False
    on_end: Callable[[Request], None] | None = None
    config_key: str = ""
    """``config_key(config)``; the app passes the one it keeps, sparing a JSON dump per call."""

    def __post_init__(self) -> None:
        if not self.config_key:
            self.config_key = config_key(self.config)
        send, receive = anyio.create_memory_object_stream[Item](math.inf)
        self._send: MemoryObjectSendStream[Item] = send
        self.events: MemoryObjectReceiveStream[Item] = receive

    async def next_item(self) -> Item | None:
        """The next event or ending; None once it has been taken. Takes an item that is
        already waiting without a trip through the event loop."""
        try:
            return self.events.receive_nowait()
        except anyio.WouldBlock:
            try:
                return await self.events.receive()
            except anyio.EndOfStream:
                return None
        except anyio.EndOfStream:
            return None

    async def result(self) -> ResultEvent:
        """Wait for the ending, passing over the other events; raise the error."""
        while (item := await self.next_item()) is not None:
            if isinstance(item, ResultEvent):
                return item
            if isinstance(item, SupervisorError):
                raise item
        raise RuntimeError(f"request {self.id}'s ending was already taken")

    def emit(self, event: Event) -> None:
        if not self.finished:
            with contextlib.suppress(anyio.BrokenResourceError):
                self._send.send_nowait(event)

    def succeed(self, output: Any) -> None:
        now = time.monotonic()
        started = self.started or now
        timings = {
            "queued": started - self.created,
            "run": now - started,
            "total": now - self.created,
        }
        self._end(ResultEvent(self.id, output, timings))

    def fail(self, error: SupervisorError) -> None:
        self._end(error)

    def _end(self, item: Item) -> None:
        if self.finished:
            return
        self.finished = True
        with contextlib.suppress(anyio.BrokenResourceError):
            self._send.send_nowait(item)
        self._send.close()
        if self.on_end is not None:
            self.on_end(self)
