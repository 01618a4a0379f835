"""Large byte strings moved through shared memory instead of the pipe.

Each direction of a connection may have an *arena*: a buffer of ``capacity``
bytes that the sender writes and the receiver reads (in practice an ``mmap`` of
a memfd that both processes map, see ``shared_memory.py``; in tests a
``bytearray``). The sender copies a large ``bin`` value into its arena and puts
a 16-byte reference in the message instead (msgpack ext type ``BLOB_EXT``); the
receiver copies the bytes out while it decodes the message and then tells the
sender, with a ``release`` message, how far it has read so that the space can be
reused. A pipe moves data through the kernel in small pieces with a context
switch for each; an arena costs one ``memcpy`` on each side.

The arena is a ring addressed by *positions* that only grow (uint64); a
position's byte lives at ``position % capacity``. A blob never wraps: one that
does not fit before the end starts at the next multiple of ``capacity``. The
writer never blocks: when the ring has no room, ``place`` returns None and the
value travels inline. Everything here is pure memory work, without I/O.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from .errors import RemoteProtocolError

BLOB_EXT = 1
"""msgpack ext type code of a blob reference."""
_REFERENCE = struct.Struct(">QQ")
DEFAULT_THRESHOLD = 64 * 1024
"""Byte strings at least this long go through the arena; shorter ones are
cheaper inline than a ``release`` message."""


class BlobWriter:
    """The sending side of one arena."""

    def __init__(self, buffer: Any, threshold: int = DEFAULT_THRESHOLD) -> None:
        self._view = memoryview(buffer).cast("B")
        self.capacity = len(self._view)
        self.threshold = threshold
        self.head = 0
        """Position after the last byte written."""
        self.released = 0
        """Position up to which the receiver has read everything."""

    def place(self, data: bytes | bytearray) -> msgpack.ExtType | None:
        """Copy ``data`` into the arena and return its reference, or None when
        it does not fit now."""
        size = len(data)
        if size > self.capacity:
            return None
        start = self.head
        if start == self.released and start % self.capacity:
            # Nothing is outstanding: go back to the arena's start, so that the
            # memory touched (and kept resident) is the most ever in flight,
            # not the whole capacity.
            start = self.released = start + self.capacity - start % self.capacity
        offset = start % self.capacity
        if offset + size > self.capacity:
            start += self.capacity - offset
            offset = 0
        if start + size - self.released > self.capacity:
            return None
        self._view[offset : offset + size] = data
        self.head = start + size
        return msgpack.ExtType(BLOB_EXT, _REFERENCE.pack(start, size))

    def release(self, upto: int) -> None:
        """The receiver has read every blob that ends at or before ``upto``."""
        if upto > self.head:
            raise RemoteProtocolError(
                f"release up to {upto}, but only {self.head} bytes were written"
            )
        self.released = max(self.released, upto)


class BlobReader:
    """The receiving side of one arena."""

    def __init__(self, buffer: Any) -> None:
        self._view = memoryview(buffer).cast("B")
        self.capacity = len(self._view)
        self.consumed = 0
        """Position after the last blob read."""
        self._acknowledged = 0

    def take(self, reference: bytes) -> bytes:
        """The bytes a reference names (a copy: the arena space is reused)."""
        if len(reference) != _REFERENCE.size:
            raise RemoteProtocolError(f"blob reference must be 16 bytes, got {len(reference)}")
        start, size = _REFERENCE.unpack(reference)
        offset = start % self.capacity
        if start < self.consumed or offset + size > self.capacity:
            raise RemoteProtocolError(
                f"blob at position {start} of {size} bytes is outside the arena "
                f"(capacity {self.capacity}, read up to {self.consumed})"
            )
        self.consumed = start + size
        return bytes(self._view[offset : offset + size])

    def ext_hook(self, code: int, data: bytes) -> bytes:
        """msgpack's ``ext_hook``: a blob reference becomes its bytes."""
        if code != BLOB_EXT:
            raise RemoteProtocolError(f"msgpack ext type {code} is not allowed")
        return self.take(data)

    def release_due(self) -> int | None:
        """The position to acknowledge, when blobs were read since the last call."""
        if self.consumed == self._acknowledged:
            return None
        self._acknowledged = self.consumed
        return self.consumed


def externalize(value: Any, writer: BlobWriter) -> Any:
    """``value`` with every long enough bytes/bytearray placed in the arena.

    Containers are copied only where something inside them was replaced.
    """
    kind = type(value)
    if kind is bytes or kind is bytearray:
        if len(value) >= writer.threshold:
            reference = writer.place(value)
            if reference is not None:
                return reference
        return value
    if kind is dict:
        changed = None
        for key, item in value.items():
            new = externalize(item, writer)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if kind is list or kind is tuple:
        items = [externalize(item, writer) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items
    return value


def no_arena_hook(code: int, data: bytes) -> Any:
    """The ext hook of a receiver without an arena: every ext type is an error."""
    if code == BLOB_EXT:
        raise RemoteProtocolError("blob reference received, but no shared memory was set up")
    raise RemoteProtocolError(f"msgpack ext type {code} is not allowed")
