"""What ``serve``'s HTTP layer costs by itself, without sockets or a client process.

Run from the repository root::

    .venv/bin/python benchmarks/http_layer.py [--rounds 5] [--calls 3000]

``http_serve.py`` measures the round trip a client sees; this script splits it.
In one process, on uvloop as ``serve`` runs, each ``POST /run`` is a direct call
of the ASGI application (a scope, a ``receive`` that returns the body, a ``send``
that keeps the messages), so that no socket, no client and no scheduling of
three processes on the cores is in the figures:

- **echo**: the bare Starlette JSON echo of ``http_serve.py`` (``_starlette_echo``);
- **layer**: ``serve``'s application (``create_app``: its middleware, routing, body
  checks, metrics and JSON) with the app's call replaced by one that returns a
  result at once: the HTTP layer alone;
- **layer + call**: the same application calling ``benchmarks/apps/empty``'s child;
- **library**: ``app.call()`` on the same app, the call alone.

Then, once, the Python work of each (opcodes and function calls per call,
counted with a tracer), which unlike time does not drift with the machine's load:
the measure to compare two versions of the layer by.

The scope carries what ``serve``'s protocol gives every request: its connection
watch (``connection_watch``), and the mark that the whole body has arrived (a
small body comes in one read), so the handler takes the path it takes under
``serve``. Medians over the rounds of each round's median; after ``--calls // 5``
warm-up calls per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from _common import APPS_DIR, log, machine_info, machine_line, median, print_table, us, write_json

BODY = json.dumps({"input": {"x": 0}}).encode()
HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Measure = Callable[[Callable[[], Awaitable[object]], int], Awaitable[Any]]


async def median_seconds(once: Callable[[], Awaitable[object]], calls: int) -> float:
    """The median seconds of ``calls`` awaits of ``once()``, after a fifth as many
    warm-up calls."""
    for _ in range(calls // 5):
        await once()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await once()
        times.append(time.perf_counter() - started)
    return median(times)


async def python_work(once: Callable[[], Awaitable[object]], calls: int) -> dict[str, float]:
    """Python opcodes and function calls per await of ``once()`` (after a fifth as many
    warm-up calls), counted with a tracer: unlike time, the same on a busy machine as on
    an idle one. The loop's callbacks run in this thread, so they count too."""
    for _ in range(calls // 5):
        await once()
    counts = [0, 0]

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            counts[0] += 1
        elif event == "call":
            counts[1] += 1
            frame.f_trace_opcodes = True
        return trace

    sys.settrace(trace)
    try:
        for _ in range(calls):
            await once()
    finally:
        sys.settrace(None)
    return {"opcodes": counts[0] / calls, "functions": counts[1] / calls}


async def post_run(asgi: ASGIApp, calls: int, measure: Measure = median_seconds) -> Any:
    """``measure`` (the median seconds) of a direct ``POST /run`` call of ``asgi``."""
    from supervisor.http.connection_watch import SCOPE_KEY, ConnectionWatch
    from supervisor.http.limits import BODY_RECEIVED

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def once() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/run",
            "raw_path": b"/run",
            "query_string": b"",
            "root_path": "",
            "headers": list(HEADERS),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
            SCOPE_KEY: ConnectionWatch(),
            BODY_RECEIVED: True,
        }
        sent.clear()
        await asgi(scope, receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"POST /run answered {sent[0]['status']}: {sent[1:]}")

    return await measure(once, calls)


async def one_round(calls: int, measure: Measure = median_seconds) -> dict[str, Any]:
    from _common import make_supervisor
    from _starlette_echo import make_app

    from supervisor.events import ResultEvent
    from supervisor.http.server import ServerSettings, create_app

    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APPS_DIR / "empty")
        server = create_app({"empty": app}, ServerSettings())
        async with server.router.lifespan_context(server):
            with_call = await post_run(server, calls, measure)
            real_call = app.call

            async def answer_at_once(input: dict[str, Any], **_: Any) -> ResultEvent:
                return ResultEvent("stub", input, {"run": 0.0, "total": 0.0})

            app.call = answer_at_once  # this instance only
            layer = await post_run(server, calls, measure)
            app.call = real_call
        call = await measure(lambda: app.call({"x": 0}), calls)
    echo = await post_run(make_app(), calls, measure)
    return {"echo": echo, "layer": layer, "layer_and_call": with_call, "library": call}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)
    import uvloop

    info = machine_info()
    print(machine_line(info))
    rounds = []
    for number in range(1, args.rounds + 1):
        log(f"round {number}/{args.rounds}")
        rounds.append(uvloop.run(one_round(args.calls)))
    medians = {key: median([r[key] for r in rounds]) for key in rounds[0]}
    extra_layer = medians["layer"] - medians["echo"]
    extra_call = medians["layer_and_call"] - medians["library"]
    print_table(
        f"Medians of {args.rounds} rounds ({args.calls} calls each), direct ASGI calls",
        ["what", "p50", "above"],
        [
            ["echo (bare Starlette)", f"{us(medians['echo'])} us", ""],
            [
                "layer (serve's app, the call answered at once)",
                f"{us(medians['layer'])} us",
                f"the echo by {us(extra_layer)} us",
            ],
            ["library call app.call()", f"{us(medians['library'])} us", ""],
            [
                "layer + call (serve's app, the child)",
                f"{us(medians['layer_and_call'])} us",
                f"the library call by {us(extra_call)} us",
            ],
        ],
    )
    log("counting the Python work per call")
    work = uvloop.run(one_round(min(args.calls, 1000), python_work))
    print_table(
        "Python work per call (a tracer's count: the direct call's own few opcodes included)",
        ["what", "opcodes", "function calls"],
        [
            [name, f"{work[key]['opcodes']:,.0f}", f"{work[key]['functions']:,.0f}"]
            for key, name in [
                ("echo", "echo (bare Starlette)"),
                ("layer", "layer (the call answered at once)"),
                ("library", "library call app.call()"),
                ("layer_and_call", "layer + call"),
            ]
        ],
    )
    write_json("http_layer", {"machine": info, "rounds": rounds, "medians": medians, "work": work})


if __name__ == "__main__":
    main()
