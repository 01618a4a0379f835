"""A sans-I/O protocol endpoint, in the manner of h11.

``Connection(role)`` holds the decoder, the state and the open requests. Feed it
the bytes that arrived with ``receive_data`` (``b""`` means end of file), take
messages out with ``next_event`` until it returns ``NEED_DATA``, and turn
outgoing messages into bytes with ``send``. It never reads or writes anything
itself, so it is tested without processes and reused by both sides.

With arenas (``blobs.py``), long byte strings travel through shared memory: the
connection places them on ``send``, resolves them in ``next_event``, applies the
peer's ``release`` messages itself (they are never returned), and
``release_due`` gives the ``release`` to send after blobs were read. The
supervisor sends blobs only to a child whose ``hello`` says it can take them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Literal

from . import messages as m
from .blobs import BlobReader, BlobWriter
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE, FrameDecoder, encode_frames
from .states import REQUEST_OUTCOMES, TRANSITIONS, State, after_hello

Role = Literal["supervisor", "child"]


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    EOF = "EOF"


NEED_DATA = Sentinel.NEED_DATA
"""``next_event`` needs more bytes before it can return a message."""
EOF = Sentinel.EOF
"""The peer closed its end; no more messages will come."""


class Connection:
    def __init__(
        self,
        role: Role,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        blobs_out: BlobWriter | None = None,
        blobs_in: BlobReader | None = None,
    ) -> None:
        self.role: Role = role
        self.blobs_out = blobs_out
        """The arena this side writes, or None to send every byte inline."""
        self.blobs_in = blobs_in
        self.max_frame_size = max_frame_size
        self.state = State.AWAITING_HELLO
        self.requests: dict[str, type[m.Message]] = {}
        """Open requests: id -> the request's message type."""
        self.hello: m.Hello | None = None
        self._decoder = FrameDecoder(max_frame_size, max_message_size)
        self._eof = False
        self._error: ProtocolError | None = None

    # -- incoming -------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data after end of file")
        self._decoder.feed(data)

    def next_event(self) -> m.Message | Sentinel:
        if self._error is not None:
            raise self._error
        try:
            while True:
                payload = self._decoder.next_payload()
                if payload is None:
                    if not self._eof:
                        return NEED_DATA
                    if self._decoder.buffered:
                        raise RemoteProtocolError(
                            f"end of file inside a message ({self._decoder.buffered} bytes pending)"
                        )
                    return EOF
                message = m.decode(payload, self.blobs_in)
                self._apply(message, incoming=True)
                if not isinstance(message, m.Release):
                    return message
                if self.blobs_out is None:
                    raise RemoteProtocolError("release received, but no blobs were sent")
                self.blobs_out.release(message.upto)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def events(self) -> Iterator[m.Message]:
        """Every complete message received so far (stops at NEED_DATA or EOF)."""
        while True:
            event = self.next_event()
            if isinstance(event, Sentinel):
                return
            yield event

    # -- outgoing -------------------------------------------------------------

    def send(self, message: m.Message) -> list[bytes | memoryview]:
        """Validate ``message`` against the state and return the frames to write."""
        # First, so that a message that cannot be encoded changes no state. (Blobs
        # it placed are never referenced: the reader skips the gap, and the next
        # release covers it.)
        payload = m.encode(message, self._blob_writer())
        self._apply(message, incoming=False)
        return list(encode_frames(payload, self.max_frame_size))

    def release_due(self) -> m.Release | None:
        """The ``release`` to send now that blobs were read, if any were."""
        upto = None if self.blobs_in is None else self.blobs_in.release_due()
        return None if upto is None else m.Release(upto)

    def _blob_writer(self) -> BlobWriter | None:
        if self.role == "supervisor" and not (self.hello and self.hello.shared_memory):
            return None
        return self.blobs_out

    # -- the state machine ----------------------------------------------------

    def _apply(self, message: m.Message, *, incoming: bool) -> None:
        error = RemoteProtocolError if incoming else LocalProtocolError
        sender_is_child = incoming == (self.role == "supervisor")
        if sender_is_child == message.TO_CHILD and not message.BOTH_WAYS:
            direction = "to the child" if message.TO_CHILD else "to the supervisor"
            raise error(f"{message.TYPE!r} travels only {direction}")
        if isinstance(message, m.Hello):
            if self.state is not State.AWAITING_HELLO:
                raise error(f"hello in state {self.state.value}")
            if message.protocol_version != m.PROTOCOL_VERSION:
                raise error(
                    f"protocol version {message.protocol_version} is not supported "
                    f"(this side speaks {m.PROTOCOL_VERSION})"
                )
            self.hello = message
            self.state = after_hello(message)
            return
        next_state = TRANSITIONS.get((self.state, type(message)))
        if next_state is None:
            raise error(f"{message.TYPE!r} is not allowed in state {self.state.value}")
        if isinstance(message, m.REQUESTS):
            if message.id in self.requests:
                raise error(f"request id {message.id!r} is already in use")
            self.requests[message.id] = type(message)
        elif isinstance(message, (m.Result, m.Error)) and message.id is not None:
            kind = self.requests.pop(message.id, None)
            if kind is None:
                raise error(f"{message.TYPE!r} for unknown request {message.id!r}")
            if self.state is not State.UNLOADING:  # an unload outranks a load or setup ending
                next_state = REQUEST_OUTCOMES.get((kind, isinstance(message, m.Result)), next_state)
        elif isinstance(message, m.Progress) and (
            self.requests.get(message.id) not in (m.Run, m.Setup)
        ):
            raise error(f"'progress' for {message.id!r}, which is not a running run or setup")
        elif isinstance(message, m.Partial) and self.requests.get(message.id) is not m.Run:
            raise error(f"'partial' for {message.id!r}, which is not a running request")
        elif (
            isinstance(message, m.Log)
            and message.id is not None
            and message.id not in self.requests
        ):
            raise error(f"log for {message.id!r}, which is not an open request")
        self.state = next_state
