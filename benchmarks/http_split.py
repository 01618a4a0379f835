"""Where ``serve``'s HTTP round trip goes, over real sockets, with the CPU of each process.

Run from the repository root::

    .venv/bin/python benchmarks/http_split.py [--rounds 4] [--blocks 15] [--calls 200]

``http_layer.py`` splits the round trip in one process, without sockets; this
script splits it as a client sees it. Five servers, each asked by the same
``http.client`` keep-alive client as in ``http_serve.py``:

- **echo**: the bare Starlette JSON echo (``_starlette_echo.py``);
- **echo under serve**: ``serve benchmarks/apps/empty`` with its application
  (``create_app``) replaced by that echo: ``serve``'s uvicorn settings, its
  protocol (header timeout, connection watch, coalesced writes) and its running
  children, without its HTTP layer;
- **layer**: ``serve`` with ``App.call`` answering at once: its HTTP layer, no
  call to the child;
- **serve**: ``serve`` as it is;
- **bare handler + call**: a bare ASGI handler on uvicorn that parses the body,
  calls ``app.call()`` in its own process and answers the output
  (``_bare_call.py``): no routing, checks, limits or metrics. No Python front end
  over this runtime can do less, so its p50 over the echo's plus the library
  call's is the floor for ``serve``'s ratio to the same sum (the issue asks for
  1.15x).

And the library call alone, ``app.call()`` on uvloop in a thread of this process;
with ``--baseline DIR``, the ``serve`` of another checkout too (a git worktree of
the commit to compare with).

This machine's speed drifts by tens of percent within minutes, more than the
differences between these rows, so they are measured side by side: in each
round all five servers (fresh processes) and the library's app are up at once;
after ``--settle`` seconds (the pool's fork server starts after the first
start) and 200 warm-up calls each, ``--blocks`` blocks go round them in a
rotating order, each block 20 untimed and ``--calls`` timed calls to one of
them. A round's p50 is over all its timed calls to that server; the figures are
medians over ``--rounds`` rounds, so that one process's lucky or unlucky
placement counts once. CPU per call (user + system, from the kernel's
accounting) of the server process, of its children and of this client, over the
timed calls only.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

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
from _side_by_side import HttpTarget, LibraryTarget, Target, rotate
from http_serve import APP, WARMUP, Server, first_ok, running

BARE = "bare handler + call"

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


def servers(baseline: Path | None = None) -> list[Server]:
    bench = str(APPS_DIR.parent)
    serve_args = ["serve", str(APP), "--port", "{port}"]

    def patched(patch: str) -> list[str]:
        return [sys.executable, "-c", _PATCHED_SERVE.format(patch=patch), *serve_args]

    return [
        Server("echo", [sys.executable, f"{bench}/_starlette_echo.py", "{port}"], "/run"),
        Server("echo under serve", patched(_ECHO_APP.format(bench=bench)), "/run"),
        Server("layer", patched(_ANSWER_AT_ONCE), "/run"),
        Server("serve", [sys.executable, "-m", "supervisor", *serve_args], "/run"),
        Server(BARE, [sys.executable, f"{bench}/_bare_call.py", "{port}"], "/run"),
    ] + (
        []
        if baseline is None
        else [  # run from its directory, `-m` imports that checkout's supervisor
            Server(
                "serve (baseline)",
                [sys.executable, "-m", "supervisor", *serve_args],
                "/run",
                cwd=baseline.resolve(),
            )
        ]
    )


def one_round(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """All servers and the library's app up at once, asked in rotating blocks."""
    with contextlib.ExitStack() as stack:
        targets: list[Target] = []
        for server in servers(args.baseline):
            port = free_port()
            proc = stack.enter_context(running(server, port))
            first_ok(port, server.path, proc, time.perf_counter())
            targets.append(HttpTarget(server.name, port, server.path, proc.pid))
        library = LibraryTarget("library call", APP, "call", {"pool_size": 0})
        stack.callback(library.close)
        targets.append(library)
        time.sleep(args.settle)
        for target in targets:
            target.warm_up(WARMUP)
        done = rotate(targets, args.blocks, args.calls)
    for name, calls in done.items():
        if calls.failed:
            raise RuntimeError(f"{name} answered {calls.failed} calls with another status than 200")
    count = args.blocks * args.calls
    return {
        name: {
            "p50": median(calls.lat),
            "server_cpu": calls.cpu[0] / count,
            "children_cpu": calls.cpu[1] / count,
            "client_cpu": calls.cpu[2] / count,
        }
        for name, calls in done.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=15, help="timed blocks per server and round")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per block")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after the first 200s")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (a git worktree of the commit to compare with): its `serve` "
        "runs side by side with the others, as 'serve (baseline)'",
    )
    args = parser.parse_args()
    info = machine_info()
    print(f"# serve's HTTP round trip, split\n\n{machine_line(info)}\n")
    rounds: dict[str, list[dict[str, float]]] = {}
    for number in range(1, args.rounds + 1):
        log(f"round {number}/{args.rounds}")
        for name, each in one_round(args).items():
            rounds.setdefault(name, []).append(each)
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
    calls = args.blocks * args.calls
    print_table(
        f"Medians of {args.rounds} rounds ({calls} calls to each per round); CPU per call",
        ["server", "p50", "p50 above echo", "server CPU", "children CPU", "client CPU"],
        rows,
    )
    both = echo + figures["library call"]["p50"]
    print_table(
        "Against the echo plus the library call (p50)",
        ["server", "ratio"],
        [[name, f"{figures[name]['p50'] / both:.2f}x"] for name in ("serve", BARE)],
    )
    write_json("http_split", {"machine": info, "settings": vars(args), "rounds": rounds})


if __name__ == "__main__":
    main()
