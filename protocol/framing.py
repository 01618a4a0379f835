"""Length-prefixed framing: the lowest layer of the wire format.

A frame is a 4-byte big-endian header followed by the payload. The header's low
31 bits are the payload length; its top bit (``MORE``) says that the message
continues in the next frame. A message is therefore one or more frames whose
payloads, concatenated, form one msgpack map. Frames are bounded by
``max_frame_size`` so that a reader never allocates more than that on the word
of a header it has not yet verified; messages are bounded separately by
``max_message_size``.

This module does no I/O: bytes go in, payloads come out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NoReturn

from .errors import RemoteProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
MORE = 0x8000_0000
LENGTH_MASK = 0x7FFF_FFFF

DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024 * 1024


def check_limits(max_frame_size: int, max_message_size: int) -> None:
    if not 1 <= max_frame_size <= LENGTH_MASK:
        raise ValueError(f"max_frame_size must be in 1..{LENGTH_MASK}, got {max_frame_size}")
    if max_message_size < 1:
        raise ValueError(f"max_message_size must be positive, got {max_message_size}")


SMALL_FRAME = 64 * 1024
"""Up to this size a frame's header and payload are joined, so one write sends it."""


def encode_frames(
    payload: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> Iterator[bytes | memoryview]:
    """Yield the buffers that carry ``payload``, headers included, in order.

    A small payload comes back as one ``bytes`` (header and payload together,
    written with one system call); a large one as headers and views of the
    payload, so that it is never copied here.
    """
    size = len(payload)
    if size <= min(max_frame_size, SMALL_FRAME):
        yield HEADER.pack(size) + payload
        return
    view = memoryview(payload)
    for start in range(0, size, max_frame_size):
        chunk = view[start : start + max_frame_size]
        more = MORE if start + max_frame_size < size else 0
        yield HEADER.pack(len(chunk) | more)
        yield chunk


LARGE_FRAME = 1024 * 1024
"""A frame at least this big is read into a buffer of its own, allocated once."""


class FrameDecoder:
    """Reassembles messages from a byte stream.

    ``feed`` takes whatever bytes arrived; ``next_payload`` returns one complete
    message payload, or ``None`` when more bytes are needed. A header that
    announces a frame above ``max_frame_size``, or frames adding up to more than
    ``max_message_size``, raise :class:`RemoteProtocolError` before anything is
    buffered for them. After an error the decoder is unusable.

    Small frames are cut out of one shared buffer. A large frame gets a buffer of
    its exact size as soon as its header is read, and arriving bytes are copied
    straight into it: the payload is copied once, however many reads bring it.
    """

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        check_limits(max_frame_size, max_message_size)
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._frame: bytearray | None = None
        """The large frame being filled, and how much of it is."""
        self._filled = 0
        self._frame_more = False
        self._parts: list[bytes | bytearray] = []
        self._message_size = 0
        self._broken: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buffer) + self._message_size + self._filled

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken is not None:
            raise self._broken
        frame = self._frame
        if frame is not None and self._filled < len(frame):
            take = min(len(frame) - self._filled, len(data))
            frame[self._filled : self._filled + take] = memoryview(data)[:take]
            self._filled += take
            data = memoryview(data)[take:]
        if data:
            self._buffer += data

    def next_payload(self) -> bytes | bytearray | None:
        if self._broken is not None:
            raise self._broken
        while True:
            chunk, more = self._next_frame()
            if chunk is None:
                return None
            if more:
                self._parts.append(chunk)
                self._message_size += len(chunk)
                continue
            if self._parts:
                self._parts.append(chunk)
                chunk = b"".join(self._parts)
                self._parts.clear()
                self._message_size = 0
            return chunk

    def _next_frame(self) -> tuple[bytes | bytearray | None, bool]:
        """The next complete frame's payload and its MORE flag, or (None, False)."""
        frame = self._frame
        if frame is not None:
            if self._filled < len(frame):
                return None, False
            self._frame, self._filled = None, 0
            return frame, self._frame_more
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            return None, False
        (header,) = HEADER.unpack_from(buffer)
        length = header & LENGTH_MASK
        if length > self.max_frame_size:
            self._fail(f"frame of {length} bytes exceeds the limit of {self.max_frame_size}")
        if self._message_size + length > self.max_message_size:
            self._fail(
                f"message of at least {self._message_size + length} bytes exceeds "
                f"the limit of {self.max_message_size}"
            )
        end = HEADER_SIZE + length
        if len(buffer) >= end:
            with memoryview(buffer) as view:
                chunk = bytes(view[HEADER_SIZE:end])
            del buffer[:end]
            return chunk, bool(header & MORE)
        if length < LARGE_FRAME:
            return None, False
        # Large and incomplete: give it its own buffer and fill that from now on.
        self._frame = bytearray(length)
        self._frame_more = bool(header & MORE)
        self._filled = len(buffer) - HEADER_SIZE
        self._frame[: self._filled] = memoryview(buffer)[HEADER_SIZE:]
        buffer.clear()
        return None, False

    def _fail(self, reason: str) -> NoReturn:
        self._broken = RemoteProtocolError(reason)
        self._buffer.clear()
        self._parts.clear()
        self._frame = None
        raise self._broken
