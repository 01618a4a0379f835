"""A client that leaves cancels its call: under ``serve``'s protocol, which tells the
handler through a ``ConnectionWatch`` (the call runs in the request's own task),
and under a plain uvicorn, where only ``receive`` tells. Real uvicorn in this
process, a fake child behind the app: no process is started."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
import uvicorn
from fake_child import ScriptedChild

from supervisor.core.app import App
from supervisor.http.connection_watch import SCOPE_KEY, ConnectionWatch
from supervisor.http.limits import guarded_protocol
from supervisor.http.server import create_app

pytestmark = pytest.mark.anyio
GUARD = 10.0
"""Seconds a test may take before it is stuck (a bound, not a measurement)."""


@contextlib.asynccontextmanager
async def _serving(asgi: Any, http: Any) -> AsyncIterator[int]:
    """uvicorn serving ``asgi`` with the protocol ``http``, on a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(asgi, http=http, log_level="warning", lifespan="auto")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        with anyio.fail_after(GUARD):
            while not server.started:
                await anyio.sleep(0.005)
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True


def _post(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        "POST /run HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def _leave_while_held(port: int, child: ScriptedChild) -> str:
    """Post a call that the child holds, then close the connection; the held id."""
    child.answering = False
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(_post({"input": {"n": 1}}))
        with anyio.fail_after(GUARD):
            while not child.held:
                await anyio.sleep(0.005)
        held = child.held[0]
    return held


@pytest.mark.parametrize("protocol", ["serve", "plain uvicorn"])
async def test_a_client_that_leaves_cancels_its_call(
    scripted_app: App, scripted_child: ScriptedChild, protocol: str
) -> None:
    http = guarded_protocol(10.0) if protocol == "serve" else "httptools"
    asgi = create_app({"app": scripted_app})
    async with _serving(asgi, http) as port:
        held = await _leave_while_held(port, scripted_child)
        with anyio.fail_after(GUARD):
            while (
                held not in scripted_child.cancelled()
                or scripted_app.status()["replicas"][0]["in_flight"]
            ):
                await anyio.sleep(0.005)
        metrics = asgi.state.api.metrics.render()
        assert b'outcome="disconnected"' in metrics
        scripted_child.answering = True
        with anyio.fail_after(GUARD):
            assert await scripted_app.run({"n": 2}) == {"echo": {"n": 2}}  # the child is free again


async def test_a_call_that_ends_is_answered_and_nothing_is_cancelled(
    scripted_app: App, scripted_child: ScriptedChild
) -> None:
    server = _serving(create_app({"app": scripted_app}), guarded_protocol(10.0))
    async with server as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        for n in range(3):  # one keep-alive connection, one watch per request
            await stream.send(_post({"input": {"n": n}}))
            answer = await _read_response(stream.receive)
            assert answer.startswith(b"HTTP/1.1 200")
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["output"] == {"echo": {"n": n}}
    assert scripted_child.cancelled() == []


async def _read_response(receive: Callable[[], Awaitable[bytes]]) -> bytes:
    data = b""
    with anyio.fail_after(GUARD):
        while b"\r\n\r\n" not in data:
            data += await receive()
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await receive()
    return head + b"\r\n\r\n" + body


async def test_the_protocol_fires_the_watch_of_the_request_in_flight() -> None:
    seen: list[ConnectionWatch] = []
    fired = anyio.Event()

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        watch = scope[SCOPE_KEY]
        seen.append(watch)
        watch.on_lost(fired.set)
        await fired.wait()

    async with _serving(asgi, guarded_protocol(10.0)) as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            with anyio.fail_after(GUARD):
                while not seen:
                    await anyio.sleep(0.005)
            assert not seen[0].lost
        with anyio.fail_after(GUARD):
            await fired.wait()
    assert seen[0].lost


def test_a_watch_fires_once_and_at_once_for_a_connection_already_lost() -> None:
    calls: list[str] = []
    watch = ConnectionWatch()
    watch.on_lost(lambda: calls.append("first"))
    watch.on_lost(None)
    watch.fire()
    assert calls == []  # no longer watched
    watch.on_lost(lambda: calls.append("late"))
    assert calls == ["late"]  # already lost: at once
    watch.fire()
    assert calls == ["late"]
