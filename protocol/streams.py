"""Thin I/O adapters over a ``Connection``: one blocking, one for anyio streams.

They only move bytes; every protocol decision stays in ``Connection``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from . import messages as m
from .connection import EOF, NEED_DATA, Connection

READ_SIZE = 256 * 1024


class SyncChannel:
    """Blocking message I/O over a pair of callables, such as a pipe's
    ``read1``/``write``. ``send`` is safe to call from several threads."""

    def __init__(
        self,
        connection: Connection,
        read: Callable[[int], bytes],
        write: Callable[[bytes | memoryview], Any],
    ) -> None:
        self.connection = connection
        self._read = read
        self._write = write
        self._send_lock = threading.Lock()

    def send(self, message: m.Message) -> None:
        with self._send_lock:
            for frame in self.connection.send(message):
                self._write(frame)

    def receive(self) -> m.Message:
        """The next message; raises ``EOFError`` once the peer has closed."""
        while True:
            event = self.connection.next_event()
            if event is EOF:
                raise EOFError("the peer closed the channel")
            if event is not NEED_DATA:
                assert isinstance(event, m.Message)
                return event
            self.connection.receive_data(self._read(READ_SIZE))


class MessageStream:
    """Message I/O over anyio byte streams (e.g. a subprocess's stdin/stdout).

    ``receive`` raises ``anyio.EndOfStream`` when the peer has closed its end.
    Concurrent ``send`` calls are serialised so that the frames of one message
    are never interleaved with another's.
    """

    def __init__(
        self,
        connection: Connection,
        send_stream: ByteSendStream,
        receive_stream: ByteReceiveStream,
    ) -> None:
        self.connection = connection
        self._send_stream = send_stream
        self._receive_stream = receive_stream
        self._send_lock = anyio.Lock(fast_acquire=True)

    async def send(self, message: m.Message) -> None:
        async with self._send_lock:
            for frame in self.connection.send(message):
                # Byte streams accept any buffer at run time; a view spares a copy of
                # a large payload.
                await self._send_stream.send(cast(bytes, frame))

    async def receive(self) -> m.Message:
        while True:
            event = self.connection.next_event()
            if event is EOF:
                raise anyio.EndOfStream
            if event is not NEED_DATA:
                assert isinstance(event, m.Message)
                return event
            try:
                data = await self._receive_stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                data = b""
            self.connection.receive_data(data)

    async def aclose(self) -> None:
        await self._send_stream.aclose()
        await self._receive_stream.aclose()
