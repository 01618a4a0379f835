"""The supervisor's end of one child's protocol connection.

The two protocol pipes are asyncio transports. Bytes from the child are
decoded in the transport's callback, and each message is handed at once, in
the order it came, to the handler of the request it belongs to (by id); pongs
and unattributed logs are handled there too. A handler must not block: it
records the message or passes it on to an unbounded stream, so a slow caller
never stalls the reader, and the reader never stalls the child. When the
child's stdout ends, or it breaks the protocol, every open request's handler is
called with None: their owners then learn how the child died from its exit
status.

Why transports and handlers rather than anyio streams and an inbox per request:
a task reading a stream is woken for every chunk, and a stream's send ends in a
checkpoint; with callbacks a result reaches its caller one turn of the event
loop after it arrives, and a send never yields unless the pipe is full.
``read_loop`` still gives the channel an owner: it connects the pipes, and
closes them when it ends.

With shared memory, blobs are copied out of the child's arena while a message
is decoded, and the ``release`` that frees their space is written right away
(a transport write never blocks; it buffers).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from protocol import (
    BlobReader,
    BlobWriter,
    Connection,
    Error,
    Hello,
    Log,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Result,
)

from .child_process import ChildProcess

Inbox = MemoryObjectReceiveStream[Message]
Handler = Callable[[Message | None], None]
"""Takes each message of one request in order, then None if the channel closes first."""
Arenas = tuple[Any, Any]


class ChildChannel:
    def __init__(
        self,
        child: ChildProcess,
        logger: logging.Logger,
        max_frame_size: int | None = None,
        arenas: Arenas | None = None,
    ) -> None:
        """``arenas``: the (to child, from child) shared memory the child was given."""
        kwargs: dict[str, Any] = {}
        if max_frame_size is not None:
            kwargs["max_frame_size"] = max_frame_size
        if arenas is not None:
            kwargs["blobs_out"] = BlobWriter(arenas[0])
            kwargs["blobs_in"] = BlobReader(arenas[1])
        self.connection = Connection("supervisor", **kwargs)
        self.process = child
        self._fds: tuple[int, int] | None = child.take_protocol_fds()
        self._reader: asyncio.ReadTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        # asyncio events: the transports' callbacks set and replace them, outside
        # any task, where anyio cannot tell which library is running.
        self._connected = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._write_error: str | None = None
        self.logger = logger
        self._handlers: dict[str, Handler] = {}
        self._pongs: dict[int, anyio.Event] = {}
        self._ping_seq = 0
        self.hello: Hello | None = None
        self._hello_event = anyio.Event()
        self.closed = anyio.Event()
        self.protocol_error: str | None = None
        """What the child sent that broke the protocol, if it did."""
        self.close_reason: str | None = None
        """Why the channel closed: end of stream, or the protocol violation."""
        self.fatal_error: Error | None = None
        """An ``error`` with no id: the child's last word before exiting."""
        self.mask: Callable[[str], str] | None = None
        """Hides secret values in the child's logs and errors before anyone sees them."""

    # -- the pipes --------------------------------------------------------------

    async def read_loop(self) -> None:
        """Connect the pipes and keep them until the child's stdout ends (or this
        task is cancelled); then close them."""
        loop = asyncio.get_running_loop()
        try:
            if self._fds is not None:
                read_fd, write_fd = self._fds
                self._fds = None
                self._reader, _ = await loop.connect_read_pipe(
                    lambda: _Pipe(self), os.fdopen(read_fd, "rb", buffering=0)
                )
                self._writer, _ = await loop.connect_write_pipe(
                    lambda: _Pipe(self), os.fdopen(write_fd, "wb", buffering=0)
                )
                self._connected.set()
            await self.closed.wait()
        finally:
            self._close_all()
            for transport in (self._reader, self._writer):
                if transport is not None:
                    transport.close()
            if self._fds is not None:
                for fd in self._fds:
                    os.close(fd)
                self._fds = None

    def _data_received(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            self.connection.receive_data(data)
            for message in self.connection.events():
                self._route(message)
        except ProtocolError as exc:
            self._broke_protocol(exc)
            return
        except Exception as exc:  # a bug here must not leave the channel half-open
            self.close_reason = f"internal error while reading: {exc!r}"
            self.logger.exception("cannot handle the child's messages")
            self._close_all()
            return
        release = self.connection.release_due()
        if release is not None:
            # A child that is gone, or was told to shut down, needs no release.
            with contextlib.suppress(anyio.BrokenResourceError, ProtocolError):
                self._write(release)

    def _eof_received(self) -> None:
        if self.closed.is_set():
            return
        try:
            self.connection.receive_data(b"")
            for message in self.connection.events():
                self._route(message)
            self.close_reason = "the child closed its stdout"
        except ProtocolError as exc:
            self._broke_protocol(exc)
        self._close_all()

    def _broke_protocol(self, exc: ProtocolError) -> None:
        self.protocol_error = str(exc)
        self.close_reason = f"protocol violation: {exc}"
        self.logger.error("child broke the protocol: %s", exc)
        self._close_all()

    def _pipe_lost(self, transport: asyncio.BaseTransport, exc: Exception | None) -> None:
        if transport is self._writer:
            self._write_error = f"the child's stdin closed ({exc})" if exc else "closed"
            self._can_write.set()
        elif not self.closed.is_set():
            self.close_reason = "the child's stdout broke"
            self._close_all()

    def _write(self, message: Message) -> None:
        """Encode ``message`` and hand its frames to the transport, which writes
        what the pipe takes now and buffers the rest."""
        if self._write_error is not None or self._writer is None or self._writer.is_closing():
            raise anyio.BrokenResourceError(self._write_error or "the child's stdin is closed")
        self._writer.writelines(self.connection.send(message))

    def _route(self, message: Message) -> None:
        if self.mask is not None and isinstance(message, (Log, Error)):
            message = _masked(message, self.mask)
        if isinstance(message, Hello):
            self.hello = message
            self.process.app_pid = message.pid
            self._hello_event.set()
        elif isinstance(message, Pong):
            event = self._pongs.pop(message.seq, None)
            if event is not None:
                event.set()
        elif isinstance(message, Log) and message.id is None:
            self.logger.info("[%s] %s", message.stream, message.message)
        elif isinstance(message, Error) and message.id is None:
            self.fatal_error = message
            self.logger.error("child reported: %s", message.error.message)
        else:
            request_id = getattr(message, "id", None)
            if not isinstance(request_id, str):
                return
            handler = self._handlers.get(request_id)
            if handler is None:
                return
            if isinstance(message, (Result, Error)):
                del self._handlers[request_id]
            handler(message)

    def _close_all(self) -> None:
        self.closed.set()
        self._connected.set()  # a sender waiting to start finds the channel broken
        self._can_write.set()
        self._hello_event.set()
        handlers, self._handlers = self._handlers, {}
        for request_id, handler in handlers.items():
            try:
                handler(None)
            except Exception:  # one broken handler must not leave the others waiting
                self.logger.exception("the handler of request %s failed", request_id)
        for event in self._pongs.values():
            event.set()
        self._pongs.clear()

    # -- the API used by the replica ------------------------------------------

    async def wait_hello(self) -> Hello | None:
        await self._hello_event.wait()
        return self.hello

    def open_request(self, request_id: str, handler: Handler) -> None:
        """Register a request's handler before sending the request.

        The reader calls it with each of the request's messages as it arrives,
        the last being its ``result`` or ``error``; or with None when the child's
        stdout ends before that (at once, when the channel is already closed).
        """
        if self.closed.is_set():
            handler(None)
        else:
            self._handlers[request_id] = handler

    def open_inbox(self, request_id: str) -> Inbox:
        """Register a request whose messages are read from a stream, which ends
        after its ``result`` or ``error``, or when the channel closes."""
        send, receive = anyio.create_memory_object_stream[Message](math.inf)

        def deliver(message: Message | None) -> None:
            if message is not None:
                with contextlib.suppress(anyio.BrokenResourceError):
                    send.send_nowait(message)
            if message is None or isinstance(message, (Result, Error)):
                send.close()

        self.open_request(request_id, deliver)
        return receive

    async def send(self, message: Message) -> None:
        """Send a message; waits only while the pipe to the child is full."""
        if not self._connected.is_set():
            if self.closed.is_set():
                raise anyio.ClosedResourceError("the channel is closed")
            await self._connected.wait()
        if not self._can_write.is_set():
            await self._can_write.wait()
        self._write(message)

    async def ping(self, timeout: float) -> bool:
        """True when the child answered a ping within ``timeout`` seconds."""
        if self.closed.is_set():
            return False
        self._ping_seq += 1
        seq = self._ping_seq
        event = self._pongs[seq] = anyio.Event()
        try:
            await self.send(Ping(seq=seq))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ProtocolError):
            return False
        with anyio.move_on_after(timeout):
            await event.wait()
        self._pongs.pop(seq, None)
        return event.is_set() and not self.closed.is_set()


def _masked(message: Log | Error, mask: Callable[[str], str]) -> Log | Error:
    if isinstance(message, Log):
        return dataclasses.replace(message, message=mask(message.message))
    info = message.error
    return dataclasses.replace(
        message,
        error=dataclasses.replace(
            info,
            message=mask(info.message),
            traceback=mask(info.traceback) if info.traceback else info.traceback,
        ),
    )


class _Pipe(asyncio.Protocol):
    """The protocol of both pipe transports: passes their events to the channel."""

    def __init__(self, channel: ChildChannel) -> None:
        self._channel = channel
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._channel._data_received(data)

    def eof_received(self) -> bool | None:
        self._channel._eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        assert self._transport is not None
        self._channel._pipe_lost(self._transport, exc)

    def pause_writing(self) -> None:
        self._channel._can_write = asyncio.Event()

    def resume_writing(self) -> None:
        self._channel._can_write.set()
