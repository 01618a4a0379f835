"""The one way out: thread-safe sending of protocol messages.

Messages come from the event loop (results), from worker threads running sync
app code (``metadata.log``, ``print``) and from the capture threads. One lock
covers both the state machine and the write, so messages leave in the order the
state machine accepted them and frames of two messages never interleave. The
protocol fd is blocking: a writer waits while the supervisor catches up, which
is the back-pressure that keeps a log flood or a huge output from growing
memory without bound.
"""

from __future__ import annotations

import os
import threading

from protocol import Connection, Hello, Log, Message, Progress, Run, Setup, State


class Outbox:
    def __init__(self, connection: Connection, fd: int) -> None:
        self.connection = connection
        self._fd = fd
        self.lock = threading.Lock()
        self._early: list[Log] = []
        """Also taken by the runtime while it feeds received bytes to the connection."""

    def send(self, message: Message) -> None:
        with self.lock:
            self._write(self.connection.send(message))
            if isinstance(message, Hello):
                for early in self._early:
                    self._write(self.connection.send(early))
                self._early.clear()

    def log(self, request: str | None, stream: str, text: str) -> None:
        """Send a log line; a request that has already ended makes it unattributed.

        Lines written before the handshake (by preloads, say) wait for it.
        """
        with self.lock:
            if self.connection.state is State.AWAITING_HELLO:
                self._early.append(Log(id=None, stream=stream, message=text))
                return
            if request is not None and request not in self.connection.requests:
                request = None
            self._write(self.connection.send(Log(id=request, stream=stream, message=text)))

    def progress(self, message: Progress) -> bool:
        """Send progress if its request is a run or setup still open; report whether it was sent."""
        with self.lock:
            if self.connection.requests.get(message.id) not in (Run, Setup):
                return False
            self._write(self.connection.send(message))
            return True

    def single_open_request(self) -> str | None:
        """The open request when there is exactly one: the owner of unattributable output."""
        with self.lock:
            requests = self.connection.requests
            return next(iter(requests)) if len(requests) == 1 else None

    def _write(self, frames: list[bytes | memoryview]) -> None:
        for frame in frames:
            view = memoryview(frame)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
