"""An app's bounded FIFO of the requests that no replica could take at once.

Replicas wait for it to hold a request *before* they take capacity, and take the
request only once they have it. So a request never waits behind a busy replica
while another replica is free, and no replica holds capacity while it waits: a caller
that finds a replica free and the queue empty can be served at once, without
queueing (``App.run``). The bound keeps latency from growing without limit:
a full queue refuses a request instead of holding it.
"""

from __future__ import annotations

from collections import deque

import anyio

from .request import Request


class RequestQueue:
    def __init__(self, max_size: float) -> None:
        self.max_size = max_size
        self._items: deque[Request] = deque()
        self._filled = anyio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, request: Request) -> None:
        """Queue a request; ``anyio.WouldBlock`` when the queue is full."""
        if self._closed:
            raise anyio.ClosedResourceError("the queue is closed")
        if len(self._items) >= self.max_size:
            raise anyio.WouldBlock
        self._items.append(request)
        self._filled.set()

    def put_back(self, request: Request) -> None:
        """Return a request that was taken but could not run to the head of the
        queue; it was admitted once, so the bound does not apply."""
        self._items.appendleft(request)
        self._filled.set()

    def take(self) -> Request | None:
        """The oldest request that has not ended while it waited, or None."""
        while self._items:
            request = self._items.popleft()
            if not self._items:
                self._filled = anyio.Event()
            if not request.finished:
                return request
        return None

    async def wait(self) -> bool:
        """Wait until a request is waiting (True) or the queue is closed (False)."""
        while not self._items:
            if self._closed:
                return False
            await self._filled.wait()
        return True

    def close(self) -> None:
        """Refuse new requests and wake every waiting replica; what was waiting is
        dropped (the app fails every request it knows of when it stops)."""
        self._closed = True
        self._items.clear()
        self._filled.set()
