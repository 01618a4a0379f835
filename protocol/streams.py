"""A thin blocking I/O adapter over a ``Connection``.

It only moves bytes; every protocol decision stays in ``Connection``. (The
supervisor drives its connections from asyncio pipe transports instead, see
``supervisor/process/child_channel.py``; the child from a loop reader callback, see
``child/runtime.py``.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

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
                release = self.connection.release_due()
                if release is not None:
                    self.send(release)
                return event
            self.connection.receive_data(self._read(READ_SIZE))
