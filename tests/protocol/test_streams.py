"""The I/O adapters: SyncChannel over real pipes, MessageStream over anyio streams."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream, ByteSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from protocol import messages as m
from protocol.connection import Connection
from protocol.error_info import ErrorInfo, ErrorType
from protocol.errors import RemoteProtocolError
from protocol.framing import LENGTH_MASK, MORE
from protocol.states import State
from protocol.streams import READ_SIZE, MessageStream, SyncChannel

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


# -- MessageStream over in-memory anyio byte streams --------------------------------


class MemoryByteSend(ByteSendStream):
    def __init__(self, stream: MemoryObjectSendStream[bytes]) -> None:
        self._stream = stream

    async def send(self, item: bytes) -> None:
        await self._stream.send(bytes(item))

    async def aclose(self) -> None:
        await self._stream.aclose()


class MemoryByteReceive(ByteReceiveStream):
    def __init__(self, stream: MemoryObjectReceiveStream[bytes]) -> None:
        self._stream = stream
        self._pending = b""
        self.max_bytes_seen: list[int] = []

    async def receive(self, max_bytes: int = 65536) -> bytes:
        self.max_bytes_seen.append(max_bytes)
        if not self._pending:
            self._pending = await self._stream.receive()  # EndOfStream when closed
        chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


def byte_pipe(buffer: float = 0) -> tuple[MemoryByteSend, MemoryByteReceive]:
    send, receive = anyio.create_memory_object_stream[bytes](buffer)
    return MemoryByteSend(send), MemoryByteReceive(receive)


def stream_pair(max_frame_size: int = 16 * MiB) -> tuple[MessageStream, MessageStream]:
    to_child_send, to_child_receive = byte_pipe(100)
    to_sup_send, to_sup_receive = byte_pipe(100)
    sup = MessageStream(
        Connection("supervisor", max_frame_size=max_frame_size), to_child_send, to_sup_receive
    )
    child = MessageStream(
        Connection("child", max_frame_size=max_frame_size), to_sup_send, to_child_receive
    )
    return sup, child


def test_message_stream_session() -> None:
    async def main() -> None:
        sup, child = stream_pair(max_frame_size=1024)
        blob = bytes(range(256)) * 100  # spans many frames

        async def run_child() -> None:
            await child.send(hello())
            setup = await child.receive()
            assert isinstance(setup, m.Setup)
            await child.send(m.Result(id=setup.id))
            run = await child.receive()
            assert isinstance(run, m.Run)
            await child.send(m.Partial(id=run.id, output=run.input["blob"][:10]))
            await child.send(m.Result(id=run.id, output=run.input))
            assert await child.receive() == m.Unload()
            await child.send(m.Unloaded())
            await child.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_child)
            assert await sup.receive() == hello()
            await sup.send(m.Setup(id="s"))
            assert await sup.receive() == m.Result(id="s")
            await sup.send(m.Run(id="r", function="echo", input={"blob": blob}))
            assert await sup.receive() == m.Partial(id="r", output=blob[:10])
            assert await sup.receive() == m.Result(id="r", output={"blob": blob})
            await sup.send(m.Unload())
            assert await sup.receive() == m.Unloaded()
            with pytest.raises(anyio.EndOfStream):
                await sup.receive()
        assert sup.connection.state is child.connection.state is State.CLOSED

    anyio.run(main)


def test_message_stream_reads_in_read_size_chunks() -> None:
    async def main() -> None:
        send, receive = byte_pipe(10)
        stream = MessageStream(Connection("supervisor"), send, receive)
        await send.send(b"".join(Connection("child").send(hello())))
        assert await stream.receive() == hello()
        assert receive.max_bytes_seen == [READ_SIZE]

    anyio.run(main)


def test_message_stream_concurrent_sends_do_not_interleave() -> None:
    async def main() -> None:
        to_sup_send, to_sup_receive = byte_pipe(0)  # unbuffered: every frame is a checkpoint
        child = MessageStream(Connection("child", max_frame_size=32), to_sup_send, byte_pipe()[1])
        sup = MessageStream(Connection("supervisor", max_frame_size=32), byte_pipe()[0],
                            to_sup_receive)  # fmt: skip
        child.connection.state = State.EMPTY  # as if hello had been exchanged
        sup.connection.state = State.EMPTY
        senders, per_sender = 5, 10
        received: list[m.Message] = []

        async def send_logs(n: int) -> None:
            for i in range(per_sender):
                await child.send(m.Log(id=None, stream="log", message=f"{n}:{i}:" + "x" * 200))

        async with anyio.create_task_group() as tg:
            for n in range(senders):
                tg.start_soon(send_logs, n)
            for _ in range(senders * per_sender):
                received.append(await sup.receive())
        per: dict[str, list[int]] = {}
        for message in received:
            assert isinstance(message, m.Log)
            sender, index, body = message.message.split(":")
            assert body == "x" * 200
            per.setdefault(sender, []).append(int(index))
        assert per == {str(n): list(range(per_sender)) for n in range(senders)}

    anyio.run(main)


@pytest.mark.parametrize("how", ["close", "broken"])
def test_message_stream_end_of_stream(how: str) -> None:
    class Broken(ByteReceiveStream):
        async def receive(self, max_bytes: int = 65536) -> bytes:
            raise anyio.BrokenResourceError

        async def aclose(self) -> None:
            pass

    async def main() -> None:
        send, receive = byte_pipe(10)
        source: ByteReceiveStream = receive if how == "close" else Broken()
        stream = MessageStream(Connection("child"), byte_pipe()[0], source)
        await send.aclose()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        with pytest.raises(anyio.EndOfStream):  # and again
            await stream.receive()

    anyio.run(main)


def test_message_stream_eof_inside_a_message() -> None:
    async def main() -> None:
        send, receive = byte_pipe(10)
        stream = MessageStream(Connection("supervisor"), byte_pipe()[0], receive)
        await send.send(struct.pack(">I", 50) + b"partial")
        await send.aclose()
        with pytest.raises(RemoteProtocolError, match="end of file inside a message"):
            await stream.receive()

    anyio.run(main)


def test_message_stream_aclose_closes_both() -> None:
    async def main() -> None:
        out_send, out_receive = byte_pipe(10)
        in_send, in_receive = byte_pipe(10)
        stream = MessageStream(Connection("child"), out_send, in_receive)
        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await out_send.send(b"x")
        with pytest.raises(anyio.BrokenResourceError):
            await in_send.send(b"x")  # nobody can receive any more
        with pytest.raises(anyio.EndOfStream):
            await out_receive.receive()

    anyio.run(main)


def test_error_message_through_stream() -> None:
    async def main() -> None:
        sup, child = stream_pair()
        error = m.Error(id=None, error=ErrorInfo(ErrorType.LOAD_FAILED, "no App", "ImportError"))
        await child.send(error)
        assert await sup.receive() == error

    anyio.run(main)
