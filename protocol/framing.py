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


class FrameDecoder:
    """Reassembles messages from a byte stream.

    ``feed`` takes whatever bytes arrived; ``next_payload`` returns one complete
    message payload, or ``None`` when more bytes are needed. A header that
    announces a frame above ``max_frame_size``, or frames adding up to more than
    ``max_message_size``, raise :class:`RemoteProtocolError` before anything is
    buffered for them. After an error the decoder is unusable.
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
        self._parts: list[bytes] = []
        self._message_size = 0
        self._broken: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buffer) + self._message_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken is not None:
            raise self._broken
        self._buffer += data

    def next_payload(self) -> bytes | None:
        if self._broken is not None:
            raise self._broken
        while True:
            buffer = self._buffer
            if len(buffer) < HEADER_SIZE:
                return None
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
            if len(buffer) < end:
                return None
            with memoryview(buffer) as view:
                chunk = bytes(view[HEADER_SIZE:end])
            del buffer[:end]
            if header & MORE:
                self._parts.append(chunk)
                self._message_size += length
                continue
            if self._parts:
                self._parts.append(chunk)
                chunk = b"".join(self._parts)
                self._parts.clear()
                self._message_size = 0
            return chunk

    def _fail(self, reason: str) -> NoReturn:
        self._broken = RemoteProtocolError(reason)
        self._buffer.clear()
        self._parts.clear()
        raise self._broken
