"""Where ``serve``'s HTTP round trip goes, over real sockets, with the CPU of each process.

Run from the repository root::

    .venv/bin/python benchmarks/http_split.py [--rounds 3] [--calls 3000]

``http_layer.py`` splits the round trip in one process, without sockets; this
script splits it as a client sees it. Four servers, one after the other, each
asked by the same ``http.client`` keep-alive client as in ``http_serve.py``:

- **echo**: the bare Starlette JSON echo (``_starlette_echo.py``);
- **echo under serve**: ``serve benchmarks/apps/empty`` with its application
  (``create_app``) replaced by that echo: ``serve``'s uvicorn settings, its
  protocol (header timeout, connection watch, coalesced writes) and its running
  children, without its HTTP layer;
- **layer**: ``serve`` with ``App.call`` answering at once: its HTTP layer, no
  call to the child;
- **serve**: ``serve`` as it is.

Each server settles for ``--settle`` seconds after its first 200 (the pool's
fork server starts then), answers 200 warm-up calls, then ``--calls`` timed
ones; the CPU time (user + system) of the server process, of its children and
of this client over the timed calls is divided by their number. Medians over
``--rounds``. The library call alone, in this process (``app.call()`` on uvloop)
with its child's CPU, is the last row.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from typing import Any

import psutil
from _common import (
    APPS_DIR,
    free_port,
    log,
    machine_info,
    machine_line,
    median,
    print_table,
    us,
    write_json,
)
from http_serve import APP, BODY, HEADERS, WARMUP, Server, first_ok, running

_PATCHED_SERVE = """\
import sys
{patch}
from supervisor.cli import main
sys.exit(main(sys.argv[1:]))
"""
_ECHO_APP = """\
sys.path.insert(0, {bench!r})
from _starlette_echo import make_app
from supervisor.http import server
server.create_app = lambda *args, **kwargs: make_app()
"""
_ANSWER_AT_ONCE = """\
from supervisor.core import app
from supervisor.events import ResultEvent
async def answer(self, input, **options):
    return ResultEvent("stub", input, {"run": 0.0, "total": 0.0})
app.App.call = answer
"""


def servers() -> list[Server]:
    bench = str(APPS_DIR.parent)
    serve_args = ["serve", str(APP), "--port", "{port}"]

    def patched(patch: str) -> list[str]:
        return [sys.executable, "-c", _PATCHED_SERVE.format(patch=patch), *serve_args]

    return [
        Server("echo", [sys.executable, f"{bench}/_starlette_echo.py", "{port}"], "/run"),
        Server("echo under serve", patched(_ECHO_APP.format(bench=bench)), "/run"),
        Server("layer", patched(_ANSWER_AT_ONCE), "/run"),
        Server("serve", [sys.executable, "-m", "supervisor", *serve_args], "/run"),
    ]


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def measure(server: Server, calls: int, settle: float) -> dict[str, float]:
    port = free_port()
    with running(server, port) as proc:
        first_ok(port, server.path, proc, time.perf_counter())
        time.sleep(settle)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def call() -> None:
            conn.request("POST", server.path, BODY, HEADERS)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{server.name} answered {response.status}")

        for _ in range(WARMUP):
            call()
        process = psutil.Process(proc.pid)
        children = process.children(recursive=True)
        before = (_cpu(process), sum(map(_cpu, children)), time.process_time())
        lat = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            lat.append(time.perf_counter() - started)
        after = (_cpu(process), sum(map(_cpu, children)), time.process_time())
        conn.close()
    spent = [(b - a) / calls for a, b in zip(before, after, strict=True)]
    server_cpu, children_cpu, client_cpu = spent
    return {
        "p50": median(lat),
        "server_cpu": server_cpu,
        "children_cpu": children_cpu,
        "client_cpu": client_cpu,
    }


def library(calls: int) -> dict[str, float]:
    """``app.call()`` in this process on uvloop, with its child's CPU."""
    import uvloop
    from _common import make_supervisor

    async def go() -> dict[str, float]:
        async with make_supervisor(pool_size=0) as sup:
            app = await sup.start(APP)
            for _ in range(WARMUP):
                await app.call({"x": 0})
            children = psutil.Process().children(recursive=True)
            before = (time.process_time(), sum(map(_cpu, children)))
            lat = []
            for _ in range(calls):
                started = time.perf_counter()
                await app.call({"x": 0})
                lat.append(time.perf_counter() - started)
            after = (time.process_time(), sum(map(_cpu, children)))
        own, child = ((b - a) / calls for a, b in zip(before, after, strict=True))
        return {"p50": median(lat), "server_cpu": own, "children_cpu": child, "client_cpu": 0.0}

    result: dict[str, float] = uvloop.run(go())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after the first 200")
    args = parser.parse_args()
    info = machine_info()
    print(f"# serve's HTTP round trip, split\n\n{machine_line(info)}\n")
    rounds: dict[str, list[dict[str, float]]] = {}
    for number in range(1, args.rounds + 1):
        for server in servers():
            log(f"round {number}/{args.rounds}: {server.name}")
            rounds.setdefault(server.name, []).append(measure(server, args.calls, args.settle))
        log(f"round {number}/{args.rounds}: library")
        rounds.setdefault("library call", []).append(library(args.calls))
    figures = {
        name: {key: median([r[key] for r in runs]) for key in runs[0]}
        for name, runs in rounds.items()
    }
    echo = figures["echo"]["p50"]
    rows: list[list[Any]] = [
        [
            name,
            f"{us(f['p50'])} us",
            f"{us(f['p50'] - echo)} us" if name != "library call" else "",
            f"{us(f['server_cpu'])} us",
            f"{us(f['children_cpu'])} us",
            f"{us(f['client_cpu'])} us" if name != "library call" else "",
        ]
        for name, f in figures.items()
    ]
    print_table(
        f"Medians of {args.rounds} rounds ({args.calls} calls each); CPU per call",
        ["server", "p50", "p50 above echo", "server CPU", "children CPU", "client CPU"],
        rows,
    )
    write_json("http_split", {"machine": info, "settings": vars(args), "rounds": rounds})


if __name__ == "__main__":
    main()
