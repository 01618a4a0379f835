"""``serve``'s own start and its HTTP round trip, against a bare Starlette echo and coglet.

Run from the repository root::

    .venv/bin/python benchmarks/http_serve.py [--rounds 5] [--calls 2000] [--quick]
        [--coglet-python /path/to/venv/bin/python]   (or COGLET_PYTHON=...)

One client for every server: the standard library's ``http.client`` over one
keep-alive connection, posting ``{"input": {"x": 0}}`` to a no-op. Per round:

- **start**: each server in turn, from spawning its process to its first 200 (the
  client retries refused connections every millisecond and non-200 answers every
  5 ms); it then keeps running, and the next starts ``SETTLE`` seconds later, when
  the last one's pool and fork server have started;
- **round trip**: with all of them up (and the library's app, below), 200 warm-up
  calls each, then ``--calls`` timed calls each, side by side
  (``_side_by_side.py``): blocks of 200 go round them in a rotating order, so that
  the machine's drift within minutes falls on all of them alike. p50 and p99;
  non-200 answers are counted apart and left out of the percentiles.

The servers: ``python -m supervisor serve benchmarks/apps/empty``; a bare Starlette
JSON echo on uvicorn with the loop and protocol ``serve`` uses (uvloop, httptools;
``_starlette_echo.py``); and, when an interpreter that imports ``coglet`` and ``cog``
is given, Replicate Cog's server (coglet) with a ``Predictor`` whose ``predict``
returns its input. Coglet is optional (install it in a separate virtualenv:
``python3 -m venv /tmp/cog && /tmp/cog/bin/pip install cog==0.23.1``); without it
the script says so and skips it. In the same round, in a thread of this process:
the library call ``app.run()`` on the same app (on uvloop, as ``serve`` runs),
from ``Supervisor()`` to the first result, then its calls in the same rotation.

The figures reported are medians over the rounds; the ratios are the issue's
targets: ``serve`` start against coglet's, ``serve`` p50 against coglet's (0.6x),
and against the echo's p50 plus the library call's (1.15x).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from _common import (
    APPS_DIR,
    BENCH_DIR,
    ROOT,
    free_port,
    fx,
    log,
    machine_info,
    machine_line,
    median,
    ms,
    print_table,
    ratio,
    summary,
    us,
    write_json,
)
from _side_by_side import BODY, HEADERS, HttpTarget, LibraryTarget, Target, rotate

APP = APPS_DIR / "empty"
WARMUP = 200
SETTLE = 2.0
"""Seconds after a server's first 200 before the next starts: its pool fills then."""
BLOCK = 200
"""Timed calls per block of the side-by-side round trips."""
COG_PREDICTOR = """\
from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        pass

    def predict(self, x: int = 0) -> int:
        return x
"""


class Server:
    """One server under test: how to start it and where to post."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        path: str,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.argv, self.path, self.cwd, self.env = name, list(argv), path, cwd, env


@contextlib.contextmanager
def running(server: Server, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The server's process (in its own session: its children end with it)."""
    argv = [part.replace("{port}", str(port)) for part in server.argv]
    proc = subprocess.Popen(
        argv,
        cwd=server.cwd,
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def first_ok(port: int, path: str, proc: subprocess.Popen[bytes], started: float) -> float:
    """Seconds from ``started`` to the first 200 of ``POST path``."""
    deadline = started + 120
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", path, BODY, HEADERS)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return time.perf_counter() - started
            time.sleep(0.005)
        except (ConnectionError, http.client.HTTPException):
            time.sleep(0.001)
        finally:
            conn.close()
    raise RuntimeError("no 200 within 120 s")


def untimed_start(server: Server) -> None:
    """Start and stop ``server`` once, so that its bytecode is compiled."""
    port = free_port()
    with running(server, port) as proc:
        first_ok(port, server.path, proc, time.perf_counter())


def one_round(servers: Sequence[Server], calls: int) -> dict[str, dict[str, Any]]:
    """Each server's start, then all their round trips side by side with the library's."""
    with contextlib.ExitStack() as stack:
        starts: dict[str, float] = {}
        targets: list[Target] = []
        for server in servers:
            port = free_port()
            started = time.perf_counter()
            proc = stack.enter_context(running(server, port))
            starts[server.name] = first_ok(port, server.path, proc, started)
            targets.append(HttpTarget(server.name, port, server.path, proc.pid))
            time.sleep(SETTLE)
        library = LibraryTarget("library", APP, "run", {})
        stack.callback(library.close)
        starts["library"] = library.start
        targets.append(library)
        time.sleep(SETTLE)
        for target in targets:
            target.warm_up(WARMUP)
        done = rotate(targets, max(1, calls // BLOCK), min(calls, BLOCK))
    return {
        name: {"start": starts[name], "call": summary(each.lat), "non_200": each.failed}
        for name, each in done.items()
    }


def coglet_server(python: str | None, workdir: Path, env: dict[str, str]) -> Server | None:
    """Coglet serving a no-op predictor from ``workdir``; None (with a note) without it."""
    if not python:
        print(
            "coglet: no interpreter given (--coglet-python or COGLET_PYTHON), skipped. "
            "To compare: `python3 -m venv /tmp/cog && /tmp/cog/bin/pip install cog==0.23.1`.\n"
        )
        return None
    check = subprocess.run(
        [python, "-c", "import coglet, cog; print(coglet.__version__)"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        print(f"coglet: {python} cannot import coglet and cog, skipped.\n")
        return None
    (workdir / "predict.py").write_text(COG_PREDICTOR)
    (workdir / "cog.yaml").write_text('predict: "predict.py:Predictor"\n')
    # Coglet starts its worker with the `python` it finds on PATH.
    env = {**env, "PATH": f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"}
    code = (
        "import coglet; coglet.server.serve('predict.py:Predictor', host='127.0.0.1', port={port})"
    )
    log(f"coglet {check.stdout.strip()} from {python}")
    return Server("coglet", [python, "-c", code], "/predictions", cwd=workdir, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="starts of each server")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per round")
    parser.add_argument("--quick", action="store_true", help="--rounds 2 --calls 500")
    parser.add_argument(
        "--coglet-python",
        default=os.environ.get("COGLET_PYTHON"),
        help="an interpreter that imports coglet and cog (default: $COGLET_PYTHON)",
    )
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE if it is set (by default the servers run without "
        "it, after one untimed start, as an installed package runs with compiled bytecode)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this repository (a git worktree of the commit to compare "
        "with): its `serve` runs in the same rounds, as 'serve (baseline)'",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = min(args.rounds, 2), min(args.calls, 500)
    info = machine_info()
    print(f"# serve's start and HTTP path\n\n{machine_line(info)}\n")
    workdir = Path(tempfile.mkdtemp(prefix="http-serve-bench-"))
    # An installed package has its bytecode compiled (pip does it); a checkout run
    # with PYTHONDONTWRITEBYTECODE compiles every module of its own at every start.
    env = dict(os.environ)
    if not args.no_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    servers = [
        Server(
            "serve",
            [sys.executable, "-m", "supervisor", "serve", str(APP), "--port", "{port}"],
            "/run",
            env=env,
        ),
        Server(
            "starlette echo",
            [sys.executable, str(BENCH_DIR / "_starlette_echo.py"), "{port}"],
            "/run",
            env=env,
        ),
    ]
    if args.baseline is not None:
        servers.insert(
            1,
            Server(
                "serve (baseline)",
                [sys.executable, "-m", "supervisor", "serve", str(APP), "--port", "{port}"],
                "/run",
                cwd=args.baseline.resolve(),
                env=env,
            ),
        )
    cog = coglet_server(args.coglet_python, workdir, env)
    if cog is not None:
        servers.append(cog)
    if not args.no_bytecode:
        for server in servers:
            log(f"untimed start: {server.name}")
            untimed_start(server)
    rounds: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    rounds["library"] = []
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds}")
        for name, figures in one_round(servers, args.calls).items():
            rounds[name].append(figures)
    figures = {
        name: {
            "start": median([x["start"] for x in runs]),
            "p50": median([x["call"]["median"] for x in runs]),
            "p99": median([x["call"]["p99"] for x in runs]),
            "non_200": sum(x["non_200"] for x in runs),
        }
        for name, runs in rounds.items()
    }
    calls = args.calls * args.rounds
    print_table(
        f"Medians of {args.rounds} rounds ({args.calls} calls each)",
        ["server", "start -> first 200", "p50", "p99", f"non-200 of {calls}"],
        [
            [
                name if name != "library" else "library app.run() (start: Supervisor())",
                f"{ms(f['start'])} ms",
                f"{us(f['p50'])} us",
                f"{us(f['p99'])} us",
                str(f["non_200"]),
            ]
            for name, f in figures.items()
        ],
    )
    serve = figures["serve"]
    floor = figures["starlette echo"]["p50"] + figures["library"]["p50"]
    rows = [
        ["serve p50 / (echo p50 + library p50)", fx(ratio(serve["p50"], floor), 2), "<= 1.15x"],
    ]
    if "coglet" in figures:
        rows += [
            [
                "serve start / coglet start",
                fx(ratio(serve["start"], figures["coglet"]["start"]), 2),
                "<= 1x",
            ],
            [
                "serve p50 / coglet p50",
                fx(ratio(serve["p50"], figures["coglet"]["p50"]), 2),
                "<= 0.6x",
            ],
        ]
    print_table("Against the targets", ["ratio", "this run", "target"], rows)
    write_json(
        "http_serve",
        {"machine": info, "settings": vars(args), "rounds": rounds, "figures": figures},
    )


if __name__ == "__main__":
    main()
