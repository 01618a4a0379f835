"""What one HTTP client may cost the server: body sizes, slow clients, connections.

``HttpLimits`` holds the operator's bounds (each a ``serve`` option). Two of
them need the transport: ``max_connections`` and ``keep_alive_timeout`` are
uvicorn's own settings, and ``header_timeout`` is added to uvicorn's
httptools protocol (``guarded_protocol``), which otherwise waits for a
request's headers for ever. The body bounds are enforced by ``BodyGuard``, a
pure ASGI middleware that wraps ``receive``: a declared ``Content-Length``
over the limit is refused before a byte is read, a body that grows past it is
cut off, and a client that stalls between two chunks of its body for
``body_timeout`` seconds is dropped. A multipart body (uploads) has its own,
larger bound. Under ``guarded_protocol`` a body that has all arrived before the
app reads it (most do: they come with their headers) is read without a timer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MiB = 2**20
BODY_RECEIVED = "appvisor.body_received"
"""Set in a request's ASGI scope by ``guarded_protocol`` once its whole body is in."""


@dataclass(frozen=True)
class HttpLimits:
    """What one client may cost: the bounds below, each a ``serve`` option."""

    max_body_size: int = 32 * MiB
    """A JSON body, or the ``request`` part of a multipart one. Large data belongs
    in uploads or URLs."""
    max_upload_size: int = 1024 * MiB
    """A whole multipart body: every uploaded file of one request together."""
    body_timeout: float = 30.0
    """Seconds a client may stall between two chunks of its body."""
    header_timeout: float = 10.0
    """Seconds from a connection's start (or the end of its last request) to the end
    of the next request's headers."""
    keep_alive_timeout: int = 5
    """Seconds an idle keep-alive connection is kept open."""
    max_connections: int = 1000
    """Connections and requests at once; past it the server answers 503."""
    parse_off_loop: int = 256 * 1024
    """Bodies at least this long are parsed in a worker thread, so that a large
    one does not hold up every other client."""


class BodyRejected(Exception):
    """The client's body broke a limit; ``status`` is 413 or 408."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message


class BodyGuard:
    """Pure ASGI: bound the size of a request's body and the pauses while it arrives."""

    def __init__(self, app: ASGIApp, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_size
        what = "body"
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-type" and value.startswith(b"multipart/form-data"):
                limit, what = self.limits.max_upload_size, "multipart body"
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > limit:
            rejected = too_large(what, limit)
            await _reject(rejected, scope, receive, send)
            return
        guarded = _GuardedReceive(scope, receive, limit, what, self.limits)
        await self.app(scope, guarded, send)


class _GuardedReceive:
    def __init__(
        self, scope: Scope, receive: Receive, limit: int, what: str, limits: HttpLimits
    ) -> None:
        self._scope = scope
        self._receive = receive
        self._limit = limit
        self._what = what
        self._timeout = limits.body_timeout
        self._seen = 0
        self._body_done = False

    async def __call__(self) -> Message:
        if self._body_done:
            return await self._receive()  # only a disconnect can come now
        if self._scope.get(BODY_RECEIVED):
            message = await self._receive()  # no wait: it is all here
        else:
            with anyio.move_on_after(self._timeout) as timer:
                message = await self._receive()
            if timer.cancelled_caught:
                raise BodyRejected(
                    408,
                    "request_timeout",
                    f"the client sent nothing of its body for {self._timeout:g} s",
                )
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                raise too_large(self._what, self._limit)
            if not message.get("more_body", False):
                self._body_done = True
        else:
            self._body_done = True
        return message


def too_large(what: str, limit: int) -> BodyRejected:
    return BodyRejected(413, "too_large", f"the {what} is larger than {limit} bytes")


async def _reject(rejected: BodyRejected, scope: Scope, receive: Receive, send: Send) -> None:
    from .wire import error_response  # the wire format imports nothing from here

    response = error_response(
        rejected.status,
        {"type": rejected.type, "message": rejected.message},
        headers={"Connection": "close"},
    )
    await response(scope, receive, send)


def guarded_protocol(header_timeout: float) -> type[Any]:
    """uvicorn's httptools protocol, closing connections whose headers take longer
    than ``header_timeout`` seconds to arrive (a slow-loris client holds a
    connection for ever otherwise), sending each response in one write
    (``writes``), and telling a request's handler when its client leaves
    (``connection_watch``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from .connection_watch import SCOPE_KEY, ConnectionWatch
    from .writes import CoalescedTransport

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: Any = None
        _watches: deque[tuple[Any, ConnectionWatch]]
        """This connection's requests, oldest first; those answered leave from the front
        (responses complete in order), and those still unanswered when it is lost fire."""

        def connection_made(self, transport: Any) -> None:
            self._watches = deque()
            super().connection_made(CoalescedTransport(transport, self.loop))
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None:
                watches = self._watches
                while watches and watches[0][0].response_complete:
                    watches.popleft()
                watch = ConnectionWatch()
                scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
                scope[SCOPE_KEY] = watch
                watches.append((cycle, watch))

        def on_message_complete(self) -> None:
            super().on_message_complete()
            if self.cycle is not None:
                scope: dict[str, Any] = self.cycle.scope  # type: ignore[assignment]
                scope[BODY_RECEIVED] = True

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers are due in time too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)
            for cycle, watch in self._watches:
                if not cycle.response_complete:
                    watch.fire()
            self._watches.clear()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
