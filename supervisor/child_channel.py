"""The supervisor's end of one child's protocol connection.

One reader task owns the receive side: it routes each message to the request it
belongs to (by id), answers the heartbeat, and hands unattributed logs to the
app's logger. Every open request has its own unbounded inbox, so a slow caller
never stalls the reader, and the reader never stalls the child. When the
child's stdout ends, or it breaks the protocol, every inbox is closed: the
owners of those requests then learn how the child died from its exit status.

With shared memory, the reader copies blobs out of the child's arena as it
decodes, and a second task sends the ``release`` that frees the space: the
reader itself never writes, so it can never stall behind a large send.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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
    Release,
    Result,
)
from protocol.streams import MessageStream

from .process import ChildProcess

Inbox = MemoryObjectReceiveStream[Message]
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
        self._release: Release | None = None
        self._release_wanted = anyio.Event()
        self._stream = MessageStream(self.connection, child.stdin, child.stdout)
        self.logger = logger
        self._inboxes: dict[str, MemoryObjectSendStream[Message]] = {}
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

    # -- the reader task ------------------------------------------------------

    async def read_loop(self) -> None:
        async with anyio.create_task_group() as tasks:
            if self.connection.blobs_in is not None:
                tasks.start_soon(self._release_loop)
            try:
                await self._read()
            finally:
                tasks.cancel_scope.cancel()

    async def _read(self) -> None:
        try:
            while True:
                message = await self._stream.receive()
                release = self.connection.release_due()
                if release is not None:
                    self._release = release
                    self._release_wanted.set()
                self._route(message)
        except anyio.EndOfStream:
            self.close_reason = "the child closed its stdout"
        except ProtocolError as exc:
            self.protocol_error = str(exc)
            self.close_reason = f"protocol violation: {exc}"
            self.logger.error("child broke the protocol: %s", exc)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.close_reason = "the child's stdout broke"
        finally:
            self._close_all()

    async def _release_loop(self) -> None:
        while True:
            await self._release_wanted.wait()
            self._release_wanted = anyio.Event()
            assert self._release is not None
            try:
                await self._stream.send(self._release)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ProtocolError):
                return  # the child is gone or going: the reader will see its end

    def _route(self, message: Message) -> None:
        if isinstance(message, Hello):
            self.hello = message
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
            inbox = self._inboxes.get(request_id) if isinstance(request_id, str) else None
            if inbox is None:
                return
            with contextlib.suppress(anyio.BrokenResourceError):
                inbox.send_nowait(message)
            if isinstance(message, (Result, Error)) and message.id is not None:
                del self._inboxes[message.id]
                inbox.close()

    def _close_all(self) -> None:
        self.closed.set()
        self._hello_event.set()
        for inbox in self._inboxes.values():
            inbox.close()
        self._inboxes.clear()
        for event in self._pongs.values():
            event.set()
        self._pongs.clear()

    # -- the API used by the slot ---------------------------------------------

    async def wait_hello(self) -> Hello | None:
        await self._hello_event.wait()
        return self.hello

    def open_request(self, request_id: str) -> Inbox:
        """Register an inbox for a request before sending it."""
        send, receive = anyio.create_memory_object_stream[Message](math.inf)
        if self.closed.is_set():
            send.close()
        else:
            self._inboxes[request_id] = send
        return receive

    async def send(self, message: Message) -> None:
        await self._stream.send(message)

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
