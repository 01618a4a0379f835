"""Blobs through shared memory arenas (PROTOCOL.md 4.1), with bytearrays as the memory."""

from __future__ import annotations

import random
import struct
from typing import Any

import msgpack
import pytest

from protocol import messages as m
from protocol.blobs import BLOB_EXT, BlobReader, BlobWriter, externalize
from protocol.connection import NEED_DATA, Connection
from protocol.errors import RemoteProtocolError
from protocol.framing import encode_frames

KIB = 1024
APP = {"name": "a", "functions": {}, "setup_schema": None}


class Peers:
    """A supervisor and a child sharing two in-memory arenas, past the handshake."""

    def __init__(
        self, capacity: int = 1024 * KIB, threshold: int = 64 * KIB, shared: bool = True
    ) -> None:
        to_child, from_child = bytearray(capacity), bytearray(capacity)
        self.sup = Connection(
            "supervisor",
            blobs_out=BlobWriter(to_child, threshold),
            blobs_in=BlobReader(from_child),
        )
        self.child = Connection(
            "child",
            blobs_out=BlobWriter(from_child, threshold),
            blobs_in=BlobReader(to_child),
        )
        hello = m.Hello(1, 1, "test", APP, shared_memory=shared)
        self.deliver(self.child, self.sup, hello)
        self.deliver(self.sup, self.child, m.Setup(id="s"))
        self.deliver(self.child, self.sup, m.Result(id="s"))

    @staticmethod
    def transfer(sender: Connection, receiver: Connection, message: m.Message) -> int:
        """Send, feed the bytes to the receiver; return the bytes that crossed."""
        frames = sender.send(message)
        for frame in frames:
            receiver.receive_data(frame)
        return sum(len(frame) for frame in frames)

    def deliver(self, sender: Connection, receiver: Connection, message: m.Message) -> Any:
        self.transfer(sender, receiver, message)
        event = receiver.next_event()
        assert isinstance(event, m.Message)
        release = receiver.release_due()
        if release is not None:
            self.transfer(receiver, sender, release)
            assert sender.next_event() is NEED_DATA  # consumed by the connection itself
        return event


def test_a_large_input_crosses_by_reference_and_arrives_whole() -> None:
    peers = Peers()
    data = random.Random(1).randbytes(512 * KIB)
    crossed = peers.transfer(peers.sup, peers.child, m.Run("r", "f", {"img": data, "n": 1}))
    assert crossed < 200  # the 512 KiB did not go through the pipe
    event = peers.child.next_event()
    assert isinstance(event, m.Run)
    assert event.input == {"img": data, "n": 1}
    assert type(event.input["img"]) is bytes
    assert peers.child.release_due() == m.Release(512 * KIB)
    assert peers.child.release_due() is None  # once


def test_a_large_output_crosses_by_reference() -> None:
    peers = Peers()
    peers.deliver(peers.sup, peers.child, m.Run("r", "f", {}))
    data = bytes(range(256)) * 1024
    result = peers.deliver(peers.child, peers.sup, m.Result("r", [{"a": data}, (data, 1)]))
    assert result.output == [{"a": data}, [data, 1]]
    assert peers.child.blobs_out is not None
    assert peers.child.blobs_out.released == peers.child.blobs_out.head == 2 * len(data)


def test_short_byte_strings_stay_inline() -> None:
    peers = Peers()
    crossed = peers.transfer(peers.sup, peers.child, m.Run("r", "f", {"b": b"x" * (64 * KIB - 1)}))
    assert crossed > 64 * KIB
    assert peers.child.next_event() == m.Run("r", "f", {"b": b"x" * (64 * KIB - 1)})
    assert peers.child.release_due() is None


def test_no_blobs_to_a_child_that_did_not_say_it_takes_them() -> None:
    peers = Peers(shared=False)
    crossed = peers.transfer(peers.sup, peers.child, m.Run("r", "f", {"b": bytes(100 * KIB)}))
    assert crossed > 100 * KIB


def test_a_full_arena_sends_inline_and_never_waits() -> None:
    peers = Peers(capacity=256 * KIB)
    blob = bytes(100 * KIB)
    sizes = [
        peers.transfer(peers.sup, peers.child, m.Run(f"r{i}", "f", {"b": blob})) for i in range(3)
    ]
    assert sizes[0] < 200 and sizes[1] < 200  # two fit in 256 KiB
    assert sizes[2] > 100 * KIB  # the third went inline
    events = [peers.child.next_event() for _ in range(3)]
    assert [e.input["b"] for e in events if isinstance(e, m.Run)] == [blob] * 3
    release = peers.child.release_due()
    assert release == m.Release(200 * KIB)
    peers.transfer(peers.child, peers.sup, release)
    assert peers.sup.next_event() is NEED_DATA
    crossed = peers.transfer(peers.sup, peers.child, m.Run("r3", "f", {"b": blob}))
    assert crossed < 200  # room again


def test_blobs_never_wrap_and_an_idle_arena_starts_over() -> None:
    writer = BlobWriter(bytearray(100), threshold=1)
    reader = BlobReader(writer._view.obj)
    refs = [writer.place(bytes([i]) * 40) for i in range(2)]
    assert [_position(r) for r in refs] == [(0, 40), (40, 40)]
    assert writer.place(b"z" * 40) is None  # 80 + 40 > 100: the ring is full
    assert reader.take(refs[0].data) == b"\0" * 40
    writer.release(40)
    third = writer.place(b"c" * 40)  # 80 + 40 would wrap: starts at 100
    assert _position(third) == (100, 40)
    assert [reader.take(r.data) for r in (refs[1], third)] == [b"\1" * 40, b"c" * 40]
    writer.release(140)
    assert _position(writer.place(b"d" * 10)) == (200, 10)  # nothing outstanding: offset 0


def test_random_traffic_keeps_every_byte() -> None:
    rng = random.Random(7)
    writer = BlobWriter(bytearray(1000), threshold=1)
    reader = BlobReader(writer._view.obj)
    in_flight: list[tuple[msgpack.ExtType, bytes]] = []
    inline = 0
    for _ in range(3000):
        action = rng.random()
        if action < 0.4 and in_flight:
            reference, expected = in_flight.pop(0)
            assert reader.take(reference.data) == expected
        elif action < 0.6:
            upto = reader.release_due()
            if upto is not None:
                writer.release(upto)
        else:
            data = rng.randbytes(rng.randint(1, 600))
            reference = writer.place(data)
            if reference is None:
                inline += 1
            else:
                in_flight.append((reference, data))
    assert writer.head > 50_000  # the ring went round many times
    assert inline > 0  # and was full at times


def test_externalize_copies_only_what_changed() -> None:
    writer = BlobWriter(bytearray(1000), threshold=10)
    small = {"a": [1, b"short"], "b": {"c": "x"}}
    assert externalize(small, writer) is small
    big = {"keep": small, "blob": bytearray(b"y" * 20)}
    out = externalize(big, writer)
    assert out["keep"] is small and isinstance(out["blob"], msgpack.ExtType)
    assert big["blob"] == bytearray(b"y" * 20)  # the caller's value is untouched


# -- what a receiver refuses -------------------------------------------------------


def _frames(wire: dict[str, Any]) -> list[bytes | memoryview]:
    return list(encode_frames(msgpack.packb(wire, use_bin_type=True)))


def _reference(position: int, length: int) -> msgpack.ExtType:
    return msgpack.ExtType(BLOB_EXT, struct.pack(">QQ", position, length))


def _position(reference: msgpack.ExtType | None) -> tuple[int, int]:
    assert reference is not None
    position, length = struct.unpack(">QQ", reference.data)
    return position, length


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (_reference(1020 * KIB, 8 * KIB), "outside the arena"),
        (msgpack.ExtType(BLOB_EXT, b"short"), "must be 16 bytes"),
        (msgpack.ExtType(5, b"x"), "ext type 5 is not allowed"),
    ],
)
def test_bad_references_are_protocol_errors(value: Any, match: str) -> None:
    peers = Peers()
    wire = {"type": "run", "id": "r", "function": "f", "input": {"b": value}}
    for frame in _frames(wire):
        peers.child.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match=match):
        peers.child.next_event()


def test_a_reference_behind_the_last_one_is_refused() -> None:
    peers = Peers()
    peers.deliver(peers.sup, peers.child, m.Run("r1", "f", {"b": bytes(100 * KIB)}))
    wire = {"type": "run", "id": "r2", "function": "f", "input": {"b": _reference(0, 10)}}
    for frame in _frames(wire):
        peers.child.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match="outside the arena"):
        peers.child.next_event()


def test_a_blob_without_shared_memory_is_refused() -> None:
    child = Connection("child")
    child.send(m.Hello(1, 1, "test", APP))
    child.receive_data(b"".join(bytes(f) for f in encode_frames(m.encode(m.Setup("s")))))
    child.next_event()
    child.send(m.Result("s"))
    wire = {"type": "run", "id": "r", "function": "f", "input": {"b": _reference(0, 10)}}
    for frame in _frames(wire):
        child.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match="no shared memory was set up"):
        child.next_event()


def test_a_release_beyond_what_was_written_is_refused() -> None:
    peers = Peers()
    peers.transfer(peers.child, peers.sup, m.Release(upto=5))
    with pytest.raises(RemoteProtocolError, match="only 0 bytes were written"):
        peers.sup.next_event()


def test_a_release_without_blobs_sent_is_refused() -> None:
    sup, child = Connection("supervisor"), Connection("child")
    for frame in child.send(m.Hello(1, 1, "test", APP)):
        sup.receive_data(frame)
    sup.next_event()
    for frame in child.send(m.Release(upto=0)):
        sup.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match="no blobs were sent"):
        sup.next_event()


def test_many_releases_at_once_are_consumed_without_recursion() -> None:
    peers = Peers()
    frames = [frame for _ in range(5000) for frame in peers.child.send(m.Release(upto=0))]
    peers.sup.receive_data(b"".join(bytes(frame) for frame in frames))
    assert peers.sup.next_event() is NEED_DATA
