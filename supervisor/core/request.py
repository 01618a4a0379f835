"""One request on its way through the supervisor.

The caller takes the request's events (``next_item``); the replica that runs it
adds them, from the channel's read callback or from its own task. The buffer is
unbounded so that a slow caller never stalls a child. The last item is always
either a ``ResultEvent`` or a ``SupervisorError``, and ``finished`` guards that
only one such ending is ever delivered, whoever gets there first (the child's
answer, a timeout, a cancel, a crash).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import SupervisorError
from ..events import Event, ResultEvent

Item = Event | SupervisorError


def config_key(config: dict[str, Any]) -> str:
    """A canonical form of setup values: equal configs, equal keys."""
    return json.dumps(config, sort_keys=True, default=str)


def new_request_id() -> str:
    """32 random hex digits, as unguessable as a uuid4's (whose object costs 1.6 us)."""
    return os.urandom(16).hex()


@dataclass(eq=False)
class Request:
    """One call of an app, from submission to its result or error."""

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
        self._items: deque[Item] = deque()
        # An asyncio event, not an anyio one: items arrive from the channel's read
        # callback, outside any task.
        self._arrived = asyncio.Event()

    async def next_item(self) -> Item | None:
        """The next event or ending; None once it has been taken. Takes an item that is
        already waiting without a trip through the event loop."""
        while not self._items:
            if self.finished:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        return self._items.popleft()

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
            self._items.append(event)
            self._arrived.set()

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
        self._items.append(item)
        self._arrived.set()
        if self.on_end is not None:
            self.on_end(self)
