"""The blocking I/O adapter: SyncChannel over real pipes."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from protocol import messages as m
from protocol.connection import Connection
from protocol.errors import RemoteProtocolError
from protocol.framing import LENGTH_MASK, MORE
from protocol.states import State
from protocol.streams import SyncChannel

MiB = 1024 * 1024
APP: dict[str, Any] = {"name": "echo", "functions": {}, "setup_schema": None}


def hello(app: dict[str, Any] | None = APP) -> m.Hello:
    return m.Hello(
        protocol_version=m.PROTOCOL_VERSION, pid=os.getpid(), runtime_version="t", app=app
    )


# -- SyncChannel over os.pipe -------------------------------------------------------


def write_all(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


class Pipes:
    """Two pipes, as between a supervisor and a child's stdin/stdout."""

    def __init__(self, max_frame_size: int = 16 * MiB) -> None:
        self.to_child_r, self.to_child_w = os.pipe()
        self.to_sup_r, self.to_sup_w = os.pipe()
        self.sup_writes: list[tuple[int, bytes]] = []  # (length, first 4 bytes) of each write
        self.child_writes: list[tuple[int, bytes]] = []
        sup_write = write_all(self.to_child_w)
        child_write = write_all(self.to_sup_w)

        def record_sup(data: bytes) -> None:
            self.sup_writes.append((len(data), data[:4]))
            sup_write(data)

        def record_child(data: bytes) -> None:
            self.child_writes.append((len(data), data[:4]))
            child_write(data)

        self.sup = SyncChannel(
            Connection("supervisor", max_frame_size=max_frame_size),
            lambda n: os.read(self.to_sup_r, n),
            record_sup,
        )
        self.child = SyncChannel(
            Connection("child", max_frame_size=max_frame_size),
            lambda n: os.read(self.to_child_r, n),
            record_child,
        )
        self._open = {self.to_child_r, self.to_child_w, self.to_sup_r, self.to_sup_w}

    def close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in list(self._open):
            self.close(fd)


@pytest.fixture
def pipes() -> Iterator[Pipes]:
    p = Pipes()
    yield p
    p.close_all()


def run_in_thread(target: Callable[[], None]) -> Callable[[], None]:
    """Start ``target`` in a thread; the returned function joins it and re-raises."""
    errors: list[BaseException] = []

    def wrapper() -> None:
        try:
            target()
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.start()

    def join() -> None:
        thread.join(timeout=60)
        assert not thread.is_alive(), "peer thread hung"
        if errors:
            raise errors[0]

    return join


def echo_child(channel: SyncChannel, pipes: Pipes) -> None:
    """A minimal child: hello, then answer setup/run/ping until unload."""
    channel.send(hello())
    while True:
        message = channel.receive()
        if isinstance(message, m.Setup):
            channel.send(m.Result(id=message.id))
        elif isinstance(message, m.Run):
            channel.send(m.Log(id=message.id, stream="stdout", message="echoing"))
            channel.send(m.Progress(id=message.id, fraction=1.0))
            channel.send(m.Result(id=message.id, output=message.input))
        elif isinstance(message, m.Ping):
            channel.send(m.Pong(seq=message.seq))
        elif isinstance(message, m.Unload):
            channel.send(m.Unloaded())
            pipes.close(pipes.to_sup_w)  # the child exits: its stdout closes
            return


def test_sync_channel_session(pipes: Pipes) -> None:
    join = run_in_thread(lambda: echo_child(pipes.child, pipes))
    sup = pipes.sup
    assert sup.receive() == hello()
    sup.send(m.Setup(id="s"))
    assert sup.receive() == m.Result(id="s")
    sup.send(m.Run(id="r", function="echo", input={"text": "hi", "raw": b"\x00\x01"}))
    assert sup.receive() == m.Log(id="r", stream="stdout", message="echoing")
    assert sup.receive() == m.Progress(id="r", fraction=1.0)
    assert sup.receive() == m.Result(id="r", output={"text": "hi", "raw": b"\x00\x01"})
    sup.send(m.Ping(seq=7))
    assert sup.receive() == m.Pong(seq=7)
    sup.send(m.Unload())
    assert sup.receive() == m.Unloaded()
    assert sup.connection.state is State.CLOSED
    with pytest.raises(EOFError):
        sup.receive()
    join()


def test_sync_channel_child_sees_eof(pipes: Pipes) -> None:
    pipes.sup.connection.receive_data(b"".join(pipes.child.connection.send(hello())))
    pipes.sup.receive()
    pipes.close(pipes.to_child_w)  # the supervisor goes away
    with pytest.raises(EOFError, match="closed"):
        pipes.child.receive()


def test_sync_channel_eof_inside_a_message(pipes: Pipes) -> None:
    os.write(pipes.to_sup_w, struct.pack(">I", 100) + b"only part")
    pipes.close(pipes.to_sup_w)
    with pytest.raises(RemoteProtocolError, match="end of file inside a message"):
        pipes.sup.receive()


def test_sync_channel_40_mib_with_1_mib_frames() -> None:
    pipes = Pipes(max_frame_size=MiB)
    try:
        payload = os.urandom(1024) * (40 * 1024)  # 40 MiB
        assert len(payload) == 40 * MiB
        join = run_in_thread(lambda: echo_child(pipes.child, pipes))
        sup = pipes.sup
        assert sup.receive() == hello()
        sup.send(m.Setup(id="s"))
        assert sup.receive() == m.Result(id="s")
        sup.send(m.Run(id="big", function="echo", input={"blob": payload}))
        assert isinstance(sup.receive(), m.Log)
        assert isinstance(sup.receive(), m.Progress)
        result = sup.receive()
        assert isinstance(result, m.Result)
        assert result.output["blob"] == payload
        sup.send(m.Unload())
        assert sup.receive() == m.Unloaded()
        join()
        # Both directions really were cut into frames of 1 MiB: a multi-frame message is
        # written as header, chunk, header, chunk, ...
        for writes in (pipes.sup_writes, pipes.child_writes):
            assert max(length for length, _ in writes) <= MiB + 4
            headers = [struct.unpack(">I", head)[0] for length, head in writes if length == 4]
            more = [h for h in headers if h & MORE]
            assert len(more) >= 40
            assert all(h & LENGTH_MASK == MiB for h in more)
    finally:
        pipes.close_all()


def test_sync_channel_concurrent_senders_do_not_interleave() -> None:
    pipes = Pipes(max_frame_size=64)  # every log below spans several frames
    try:
        pipes.sup.connection.receive_data(b"".join(pipes.child.connection.send(hello(None))))
        assert pipes.sup.receive() == hello(None)
        threads, per_thread = 4, 25

        def sender(n: int) -> Callable[[], None]:
            def send() -> None:
                for i in range(per_thread):
                    text = f"{n}:{i}:" + chr(ord("a") + n) * 500
                    pipes.child.send(m.Log(id=None, stream="log", message=text))

            return send

        joins = [run_in_thread(sender(n)) for n in range(threads)]
        received = [pipes.sup.receive() for _ in range(threads * per_thread)]
        for join in joins:
            join()
        seen: dict[int, list[int]] = {n: [] for n in range(threads)}
        for message in received:
            assert isinstance(message, m.Log)
            n, i, body = message.message.split(":")
            assert body == chr(ord("a") + int(n)) * 500
            seen[int(n)].append(int(i))
        assert all(order == list(range(per_thread)) for order in seen.values())
    finally:
        pipes.close_all()
