"""Turn everything the app prints into log events of the right request.

Two paths, because output arrives at two levels:

* ``sys.stdout``/``sys.stderr`` are replaced by ``RequestStream``s. Python-level
  writes (``print``, ``logging``) know which request is running through the
  ``current_request`` ContextVar, which follows asyncio tasks and anyio worker
  threads, so concurrent requests are told apart exactly.
* Writes to fds 1 and 2 from native code or subprocesses land in the capture
  pipes. A ``PipeForwarder`` thread per pipe reads them; it attributes output to
  the single open request when there is exactly one, else to none. Reading is
  done under a lock and ``drain()`` reads whatever is left under the same lock,
  so after ``drain()`` returns every byte written before it has been forwarded.
  The runtime drains before it sends a request's result, which is how a
  request's logs always precede its result.

Lines are forwarded as they complete (live, not at the end of a request); a line
longer than ``MAX_LINE`` is forwarded in pieces.
"""

from __future__ import annotations

import contextvars
import io
import os
import select
import threading
from collections.abc import Callable

current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_request", default=None
)

Sink = Callable[[str | None, str, str], None]
"""``sink(request_id, stream, text)`` sends one log event."""

MAX_LINE = 64 * 1024
READ_SIZE = 64 * 1024


class RequestStream(io.TextIOBase):
    """A text stream that forwards each line to the request writing it."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, stream: str, sink: Sink) -> None:
        super().__init__()
        self._stream = stream
        self._sink = sink
        self._lock = threading.Lock()
        self._pending: dict[str | None, str] = {}

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # Code that hands sys.stdout to a subprocess gets the captured fd.
        return 1 if self._stream == "stdout" else 2

    def write(self, text: str) -> int:
        request = current_request.get()
        with self._lock:
            buffered = self._pending.pop(request, "") + text
            lines = buffered.split("\n")
            rest = lines.pop()
            # Cut pieces of MAX_LINE, but keep the last one (1..MAX_LINE characters)
            # pending: cutting it too would turn the newline that ends the line into
            # an extra, empty log line.
            while len(rest) > MAX_LINE:
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            if rest:
                self._pending[request] = rest
        for line in lines:
            self._sink(request, self._stream, line)
        return len(text)

    def flush(self) -> None:
        self.flush_request(current_request.get())

    def flush_request(self, request: str | None) -> None:
        with self._lock:
            rest = self._pending.pop(request, "")
        if rest:
            self._sink(request, self._stream, rest)


class PipeForwarder:
    """Reads one capture pipe in a thread and forwards its lines."""

    def __init__(self, fd: int, stream: str, sink: Sink, owner: Callable[[], str | None]) -> None:
        self._fd = fd
        self._stream = stream
        self._sink = sink
        self._owner = owner
        self._lock = threading.Lock()
        self._partial = b""
        self._closed = False
        os.set_blocking(fd, False)
        self._pending_bytes = select.poll()
        self._pending_bytes.register(fd, select.POLLIN)
        self._thread = threading.Thread(target=self._loop, name=f"capture-{stream}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def drain(self) -> None:
        """Forward everything written to the pipe so far, partial line included.

        Called after every request: a zero-timeout poll says whether there is
        anything to read, which is cheaper than a read that fails (an exception).
        """
        with self._lock:
            if self._pending_bytes.poll(0):
                self._read_available()
            if self._partial:
                self._emit(self._partial)
                self._partial = b""

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._closed:
            poller.poll()
            with self._lock:
                self._read_available()

    def _read_available(self) -> None:
        while True:
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return
            if not data:
                self._closed = True
                return
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        data = self._partial + data
        *lines, rest = data.split(b"\n")
        while len(rest) > MAX_LINE:  # ">": see RequestStream.write
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial = rest
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        self._sink(self._owner(), self._stream, line.decode("utf-8", "replace"))
