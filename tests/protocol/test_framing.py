"""The framing layer: headers, MORE continuation, limits, and the decoder's failure mode."""

from __future__ import annotations

import struct

import pytest

from protocol.errors import RemoteProtocolError
from protocol.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    HEADER_SIZE,
    LENGTH_MASK,
    MORE,
    FrameDecoder,
    check_limits,
    encode_frames,
)


def header(length: int, *, more: bool = False) -> bytes:
    return struct.pack(">I", length | (MORE if more else 0))


def split_frames(data: bytes) -> list[tuple[bool, bytes]]:
    """Parse a byte string of frames independently of FrameDecoder: [(more, payload)]."""
    frames = []
    pos = 0
    while pos < len(data):
        (word,) = struct.unpack_from(">I", data, pos)
        length = word & LENGTH_MASK
        frames.append((bool(word & MORE), data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    assert pos == len(data), "trailing partial frame"
    return frames


def test_constants() -> None:
    assert HEADER_SIZE == 4
    assert MORE == 1 << 31
    assert LENGTH_MASK == (1 << 31) - 1
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024
    assert DEFAULT_MAX_MESSAGE_SIZE == 1024 * 1024 * 1024


@pytest.mark.parametrize(
    ("size", "max_frame_size", "expected_frames"),
    [
        (0, 16, 1),
        (1, 16, 1),
        (15, 16, 1),
        (16, 16, 1),
        (17, 16, 2),
        (32, 16, 2),
        (33, 16, 3),
        (100, 7, 15),
        (1000, 1, 1000),
        (5000, DEFAULT_MAX_FRAME_SIZE, 1),
    ],
)
def test_round_trip(size: int, max_frame_size: int, expected_frames: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = b"".join(encode_frames(payload, max_frame_size))

    frames = split_frames(data)
    assert len(frames) == expected_frames
    assert [more for more, _ in frames] == [True] * (expected_frames - 1) + [False]
    assert all(len(chunk) <= max_frame_size for _, chunk in frames)
    assert b"".join(chunk for _, chunk in frames) == payload

    decoder = FrameDecoder(max_frame_size=max_frame_size)
    decoder.feed(data)
    assert decoder.next_payload() == payload
    assert decoder.next_payload() is None
    assert decoder.buffered == 0


def test_single_frame_is_one_write() -> None:
    """A payload that fits comes back as one bytes object: header and payload together."""
    frames = list(encode_frames(b"hello", 16))
    assert frames == [b"\x00\x00\x00\x05hello"]


def test_known_bytes_with_more_bit() -> None:
    data = b"".join(encode_frames(b"abcdefghij", 4))
    assert data == (b"\x80\x00\x00\x04abcd" + b"\x80\x00\x00\x04efgh" + b"\x00\x00\x00\x02ij")


@pytest.mark.parametrize(("size", "max_frame_size"), [(0, 8), (5, 8), (8, 8), (50, 8), (64, 3)])
def test_one_byte_at_a_time(size: int, max_frame_size: int) -> None:
    payload = bytes(range(size))
    data = b"".join(encode_frames(payload, max_frame_size))
    decoder = FrameDecoder(max_frame_size=max_frame_size)
    results = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        got = decoder.next_payload()
        if got is not None:
            results.append((i, got))
    assert results == [(len(data) - 1, payload)]
    assert decoder.buffered == 0


def test_several_messages_in_one_feed() -> None:
    payloads = [b"one", b"", b"three" * 10, b"x"]
    decoder = FrameDecoder(max_frame_size=8)
    decoder.feed(b"".join(b"".join(encode_frames(p, 8)) for p in payloads))
    assert [decoder.next_payload() for _ in payloads] == payloads
    assert decoder.next_payload() is None


def test_buffered_counts_an_incomplete_message() -> None:
    decoder = FrameDecoder(max_frame_size=4)
    decoder.feed(header(4, more=True) + b"abcd" + header(4) + b"ef")
    assert decoder.next_payload() is None
    # 4 bytes of the completed MORE frame plus the 6 bytes of the partial frame.
    assert decoder.buffered == 4 + 6
    decoder.feed(b"gh")
    assert decoder.next_payload() == b"abcdefgh"
    assert decoder.buffered == 0


def test_zero_length_continuation_frames() -> None:
    decoder = FrameDecoder(max_frame_size=8)
    decoder.feed(header(0, more=True) + header(2, more=True) + b"ab" + header(0))
    assert decoder.next_payload() == b"ab"


@pytest.mark.parametrize(
    ("max_frame_size", "announced", "more"),
    [
        (1024, 1025, False),
        (1024, 1025, True),
        (1024, LENGTH_MASK, False),
        (1, 2, False),
        (DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE + 1, False),
    ],
)
def test_oversize_frame_rejected_on_header(max_frame_size: int, announced: int, more: bool) -> None:
    decoder = FrameDecoder(max_frame_size=max_frame_size)
    decoder.feed(header(announced, more=more))
    with pytest.raises(RemoteProtocolError, match=f"frame of {announced} bytes exceeds"):
        decoder.next_payload()
    # Nothing was (or will be) allocated on the word of the header.
    assert decoder.buffered <= HEADER_SIZE


def test_oversize_frame_rejected_before_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=16)
    decoder.feed(header(8) + b"12345678")
    assert decoder.next_payload() == b"12345678"
    decoder.feed(header(17)[:2])
    assert decoder.next_payload() is None  # half a header: nothing to check yet
    decoder.feed(header(17)[2:])
    with pytest.raises(RemoteProtocolError):
        decoder.next_payload()
    assert decoder.buffered <= HEADER_SIZE


def test_frame_exactly_at_limit_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=16)
    decoder.feed(header(16) + b"x" * 16)
    assert decoder.next_payload() == b"x" * 16


def test_message_size_limit_across_more_frames() -> None:
    decoder = FrameDecoder(max_frame_size=10, max_message_size=25)
    decoder.feed(header(10, more=True) + b"a" * 10 + header(10, more=True) + b"b" * 10)
    assert decoder.next_payload() is None
    assert decoder.buffered == 20
    # The third frame's header alone pushes the message over the limit.
    decoder.feed(header(10))
    with pytest.raises(RemoteProtocolError, match="message of at least 30 bytes exceeds"):
        decoder.next_payload()


def test_message_exactly_at_limit_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=10, max_message_size=25)
    decoder.feed(b"".join(encode_frames(b"z" * 25, 10)))
    assert decoder.next_payload() == b"z" * 25
    # The limit is per message: a second message of the same size is fine too.
    decoder.feed(b"".join(encode_frames(b"y" * 25, 10)))
    assert decoder.next_payload() == b"y" * 25


def test_message_limit_with_single_frame() -> None:
    decoder = FrameDecoder(max_frame_size=100, max_message_size=50)
    decoder.feed(header(51))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 50"):
        decoder.next_payload()


@pytest.mark.parametrize("then", ["feed", "next_payload"])
def test_decoder_unusable_after_error(then: str) -> None:
    decoder = FrameDecoder(max_frame_size=4)
    decoder.feed(header(5) + b"12345")
    with pytest.raises(RemoteProtocolError) as first:
        decoder.next_payload()
    with pytest.raises(RemoteProtocolError) as second:
        if then == "feed":
            decoder.feed(header(1) + b"x")
        else:
            decoder.next_payload()
    assert second.value is first.value


@pytest.mark.parametrize(
    ("max_frame_size", "max_message_size"),
    [(0, 1), (-1, 1), (LENGTH_MASK + 1, 1), (1, 0), (1, -5), (2**40, DEFAULT_MAX_MESSAGE_SIZE)],
)
def test_check_limits_rejects(max_frame_size: int, max_message_size: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        check_limits(max_frame_size, max_message_size)
    with pytest.raises(ValueError, match="must be"):
        FrameDecoder(max_frame_size, max_message_size)


@pytest.mark.parametrize(
    ("max_frame_size", "max_message_size"),
    [(1, 1), (LENGTH_MASK, 1), (DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE), (100, 10)],
)
def test_check_limits_accepts(max_frame_size: int, max_message_size: int) -> None:
    check_limits(max_frame_size, max_message_size)
    decoder = FrameDecoder(max_frame_size, max_message_size)
    assert (decoder.max_frame_size, decoder.max_message_size) == (max_frame_size, max_message_size)


@pytest.mark.parametrize("chunk", [1000, 65_536, 1_000_003, 3 * 1024 * 1024])
def test_large_frames_fill_their_own_buffer_from_any_chunking(chunk: int) -> None:
    """Frames of LARGE_FRAME and more take the one-copy path; the bytes that follow
    a large frame in the same read (the next message) must not be lost."""
    from protocol.framing import LARGE_FRAME

    big = bytes(range(256)) * (5 * LARGE_FRAME // 256 + 7)
    small = b"after"
    stream = b"".join(encode_frames(big, 2 * LARGE_FRAME)) + b"".join(encode_frames(small))
    decoder = FrameDecoder(max_frame_size=2 * LARGE_FRAME)
    payloads = []
    for start in range(0, len(stream), chunk):
        decoder.feed(stream[start : start + chunk])
        assert decoder.buffered <= len(big) + chunk
        while (payload := decoder.next_payload()) is not None:
            payloads.append(bytes(payload))
    assert payloads == [big, small]
    assert decoder.buffered == 0
