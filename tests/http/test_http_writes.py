"""``CoalescedTransport``: the writes of one loop step leave as one, in order, before a close."""

from __future__ import annotations

import asyncio
from typing import Any

from supervisor.http.writes import CoalescedTransport


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.events.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def get_write_buffer_size(self) -> int:
        return 0


async def _one_step() -> None:
    await asyncio.sleep(0)


def test_the_writes_of_one_step_leave_as_one_write_in_order() -> None:
    async def main() -> None:
        inner = Recording()
        transport = CoalescedTransport(inner, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.writelines([b"{", bytearray(b'"x"'), memoryview(b": 1}")])
        transport.write(b"")
        assert inner.writes == []
        assert transport.get_write_buffer_size() == 19 + 8
        await _one_step()
        assert inner.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"x": 1}']
        transport.write(b"next")
        await _one_step()
        assert inner.writes[1:] == [b"next"]

    asyncio.run(main())


def test_a_close_sends_what_is_kept_first_and_an_abort_drops_it() -> None:
    async def main() -> None:
        inner = Recording()
        transport = CoalescedTransport(inner, asyncio.get_running_loop())
        transport.write(b"last words")
        transport.close()
        assert inner.events == ["write", "close"]
        assert inner.writes == [b"last words"]
        await _one_step()  # the scheduled flush finds nothing left
        assert inner.writes == [b"last words"]

        aborted = Recording()
        transport = CoalescedTransport(aborted, asyncio.get_running_loop())
        transport.write(b"never")
        transport.abort()
        await _one_step()
        assert aborted.events == ["abort"]

    asyncio.run(main())


def test_nothing_is_written_to_a_transport_that_is_closing() -> None:
    async def main() -> None:
        inner = Recording()
        transport = CoalescedTransport(inner, asyncio.get_running_loop())
        transport.write(b"late")
        inner.closing = True  # the peer went away within the step
        await _one_step()
        assert inner.writes == []

    asyncio.run(main())
