"""A client that leaves cancels its call: under ``serve``'s protocol, which tells the
handler through a ``ConnectionWatch`` (the call runs in the request's own task),
and under a plain uvicorn, where only ``receive`` tells. Real uvicorn in this
process, a fake child behind the app: no process is started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
import uvicorn
from fake_child import ScriptedChild

from supervisor.core.app import App
from supervisor.http.connection_watch import SCOPE_KEY, ConnectionWatch
from supervisor.http.limits import guarded_protocol
from supervisor.http.server import _call_watched, create_app
from supervisor.http.wire import parse_call

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


async def _held_call(
    scripted_app: App, scripted_child: ScriptedChild, watch: ConnectionWatch
) -> tuple[asyncio.Task[None], list[Any]]:
    """``_call_watched`` of a call that the child holds, in a task of its own; that task
    and what the call returned (nothing while it runs)."""
    scripted_child.answering = False
    outcome: list[Any] = []
    body = parse_call({"input": {"n": 1}}, None)

    async def call() -> None:
        outcome.append(await _call_watched(scripted_app, body, watch))

    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(call())
    with anyio.fail_after(GUARD):
        while not scripted_child.held:
            await anyio.sleep(0.005)
    return task, outcome


async def _ended(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` without cancelling it at the guard (awaiting it would)."""
    done, _ = await asyncio.wait({task}, timeout=GUARD)
    assert task in done, "the call did not end"


async def test_the_watch_cancels_its_call_and_the_task_goes_on(
    scripted_app: App, scripted_child: ScriptedChild
) -> None:
    watch = ConnectionWatch()
    task, outcome = await _held_call(scripted_app, scripted_child, watch)
    held = scripted_child.held[0]
    watch.fire()
    await _ended(task)
    assert outcome == [(None, None)]  # the client went away: nothing to answer
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0  # the watch's cancel was handled, not left pending
    with anyio.fail_after(GUARD):
        while held not in scripted_child.cancelled():
            await anyio.sleep(0.005)


async def test_a_cancel_that_is_not_the_watchs_goes_on_up(
    scripted_app: App, scripted_child: ScriptedChild
) -> None:
    """Such as the server's own at its shutdown deadline: the call is cancelled in the
    child all the same, and the task ends cancelled."""
    watch = ConnectionWatch()
    task, outcome = await _held_call(scripted_app, scripted_child, watch)
    held = scripted_child.held[0]
    task.cancel()
    await _ended(task)
    assert task.cancelled()
    assert outcome == []
    assert not watch.lost
    watch.fire()  # later: no longer watched, nothing happens
    assert held in scripted_child.cancelled()
