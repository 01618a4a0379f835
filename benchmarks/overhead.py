"""Call overhead: round-trip latency and throughput of a no-op function.

Run from the repository root::

    .venv/bin/python benchmarks/overhead.py [--runs 3000] [--quick] [--profile]

Every row calls a no-op with a tiny input (``{"i": n}``) and waits for its answer;
each layer adds one thing to the one above it, all measured in the same run:

1. ``multiprocessing Pipe`` (baseline): a spawn-context worker echoing the dict over
   a ``multiprocessing.Pipe``, called from blocking code.
2. ``anyio subprocess echo``: a ``python -c`` child echoing length-prefixed msgpack
   over its stdin/stdout, called from an anyio event loop (the floor for any async,
   pipe-based design: event loop wake-ups, pipe syscalls, msgpack); then the same
   with an asyncio child that reads from a loop callback and answers from a task per
   message (the floor for a child that keeps reading while a request runs).
3. ``raw protocol``: the real child runtime (``python -m child`` with
   benchmarks/apps/noop_async) driven with protocol messages through ChildChannel,
   as supervisor/core/replica.py does, but without App/Replica/queue.
4. ``library app.run()``: ``Supervisor.start(...)`` + ``await app.run(...)``, one
   caller (max_concurrency=1); then the same with the caller's event loop on uvloop
   (when installed), as ``python -m supervisor serve`` runs.
5. ``library, 8 callers``: 8 concurrent callers on an app with max_concurrency=8.
6. ``HTTP serve``: ``python -m supervisor serve benchmarks/apps/noop_async
   --max-concurrency 8`` (default log level) called with ``POST /run`` over a
   keep-alive httpx client, 1 and then 8 concurrent clients, when this checkout has
   ``supervisor/cli.py``.

Finally the Pipe and ``app.run()`` once more with both processes pinned, to one CPU
and to two: unpinned, the scheduler picks either, a wake-up that crosses cores costs
tens of microseconds more in a VM, and the Pipe's latency follows that choice.

Each row also reports the CPU time per call of each process involved (this one,
the child, the HTTP server), read from the kernel's accounting (psutil): on a
2-core machine, CPU per call is what bounds throughput.

``--profile`` also runs cProfile on the supervisor side of the library loop and on
the child side of the raw-protocol loop, and prints the top functions.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from _common import (
    APPS_DIR,
    ROOT,
    SpawnEchoWorker,
    free_port,
    fx,
    log,
    machine_info,
    machine_line,
    median,
    print_table,
    ratio,
    summary,
    us,
    write_json,
)

APP = APPS_DIR / "noop_async"
CONCURRENCY = 8


@dataclass
class Measured:
    lat: list[float]
    wall: float
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds used during the measured calls, per process role."""


class CpuMeter:
    """CPU seconds (user + system, all threads) of some processes between two points."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        import psutil

        self._procs = {
            role: [psutil.Process(pid) for pid in pid_list] for role, pid_list in pids.items()
        }
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        import psutil

        out = {}
        for role, procs in self._procs.items():
            total = 0.0
            for proc in procs:
                try:
                    t = proc.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            out[role] = total
        return out

    def stop(self) -> dict[str, float]:
        end = self._read()
        return {role: end[role] - self._start[role] for role in end}


# -- the layers ---------------------------------------------------------------------------


def bench_pipe(n: int, warmup: int) -> Measured:
    with SpawnEchoWorker() as worker:
        return bench_calls(worker.call, n, warmup, worker.process.pid or 0)


def bench_calls(
    call: Callable[[Any], Any], n: int, warmup: int, child_pid: int | None = None
) -> Measured:
    """``n`` timed calls of a blocking ``call`` after ``warmup`` untimed ones."""
    for i in range(warmup):
        call({"i": i})
    lat = []
    pids = {"this process": [os.getpid()]}
    if child_pid is not None:
        pids["child"] = [child_pid]
    meter = CpuMeter(pids)
    started = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        call({"i": i})
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return Measured(lat, wall, meter.stop())


async def bench_anyio_echo(n: int, warmup: int, child_loop: bool = False) -> Measured:
    from _raw import AnyioEcho

    echo = await AnyioEcho.start(child_loop=child_loop)
    try:
        return await _loop(echo.call, n, warmup, {"child": [echo.pid]})
    finally:
        await echo.close()


async def bench_raw(n: int, warmup: int, profile_to: str | None = None) -> Measured:
    import anyio
    from _raw import RawChild

    async with anyio.create_task_group() as tasks:
        child = await RawChild.spawn(tasks, cwd=APP, probe=False, profile_to=profile_to)
        try:
            await child.load(APP)
            await child.setup({})
            measured = await _loop(child.run, n, warmup, {"child": [child.process.pid]})
        finally:
            await child.close()
        tasks.cancel_scope.cancel()
    return measured


async def _loop(
    call: Callable[[Any], Awaitable[Any]], n: int, warmup: int, pids: dict[str, list[int]]
) -> Measured:
    for i in range(warmup):
        out = await call({"i": i})
    lat = []
    meter = CpuMeter({"this process": [os.getpid()], **pids})
    started = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        out = await call({"i": i})
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    cpu = meter.stop()
    assert out["i"] == n - 1, out
    return Measured(lat, wall, cpu)


async def _callers(
    call: Callable[[Any], Awaitable[Any]], total: int, concurrency: int, lat: list[float] | None
) -> None:
    import anyio

    async def caller(count: int, offset: int) -> None:
        for i in range(count):
            t = time.perf_counter()
            out = await call({"i": offset + i})
            if lat is not None:
                lat.append(time.perf_counter() - t)
            assert out["i"] == offset + i, out

    async with anyio.create_task_group() as tasks:
        per = total // concurrency
        for c in range(concurrency):
            tasks.start_soon(caller, per, c * per)


async def bench_library(
    n: int, warmup: int, concurrency: int, profile: cProfile.Profile | None = None
) -> Measured:
    from _common import make_supervisor

    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP, name=f"noop-{concurrency}", max_concurrency=concurrency)
        await _callers(app.run, warmup, concurrency, None)
        lat: list[float] = []
        meter = CpuMeter({"this process": [os.getpid()], "child": app.status()["pids"]})
        if profile is not None:
            profile.enable()
        started = time.perf_counter()
        await _callers(app.run, n, concurrency, lat)
        wall = time.perf_counter() - started
        if profile is not None:
            profile.disable()
        cpu = meter.stop()
        await app.stop()
    return Measured(lat, wall, cpu)


def placements() -> dict[str, tuple[int, int]]:
    """CPU pairs (this process, the child) to pin the placed rows to; none without
    two CPUs or ``sched_setaffinity``."""
    if not hasattr(os, "sched_setaffinity"):
        return {}
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {}
    return {"same CPU": (cpus[0], cpus[0]), "different CPUs": (cpus[0], cpus[1])}


@contextlib.contextmanager
def pinned(this_cpu: int, child_pid: int, child_cpu: int) -> Iterator[None]:
    """This thread on ``this_cpu`` and every thread of ``child_pid`` on ``child_cpu``."""
    import psutil

    before = os.sched_getaffinity(0)
    for thread in psutil.Process(child_pid).threads():
        os.sched_setaffinity(thread.id, {child_cpu})
    os.sched_setaffinity(0, {this_cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def bench_placed(n: int, warmup: int) -> dict[str, dict[str, Measured]]:
    """The Pipe, the asyncio echo and ``app.run()`` again with both processes pinned:
    to one CPU (a wake-up is a context switch) and to two (a wake-up crosses cores).
    Unpinned, the scheduler picks either, and the Pipe's latency follows its choice."""
    from _common import make_supervisor
    from _raw import AnyioEcho

    out: dict[str, dict[str, Measured]] = {}
    for name, (this_cpu, child_cpu) in placements().items():
        with SpawnEchoWorker() as worker, pinned(this_cpu, worker.process.pid or 0, child_cpu):
            pipe = bench_calls(worker.call, n, warmup)
        echo = await AnyioEcho.start(child_loop=True)
        try:
            with pinned(this_cpu, echo.pid, child_cpu):
                floor = await _loop(echo.call, n, warmup, {"child": [echo.pid]})
        finally:
            await echo.close()
        async with make_supervisor(pool_size=0) as sup:
            app = await sup.start(APP, name=f"noop-{this_cpu}-{child_cpu}")
            with pinned(this_cpu, app.status()["pids"][0], child_cpu):
                library = await _loop(app.run, n, warmup, {"child": app.status()["pids"]})
            await app.stop()
        out[name] = {"pipe": pipe, "asyncio_echo": floor, "library": library}
    return out


async def bench_http(n: int, warmup: int, concurrency: int) -> dict[str, Any] | None:
    """``python -m supervisor serve`` over keep-alive HTTP; None when it does not exist."""
    if not (ROOT / "supervisor" / "cli.py").is_file():
        return None
    with tempfile.TemporaryFile("w+") as errors:
        return await _bench_http(n, warmup, concurrency, errors)


async def _bench_http(n: int, warmup: int, concurrency: int, errors: Any) -> dict[str, Any]:
    import anyio
    import httpx
    import psutil

    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "supervisor",
        "serve",
        str(APP),
        "--port",
        str(port),
        "--max-concurrency",
        str(concurrency),
    ]
    proc = await anyio.open_process(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            limits=httpx.Limits(max_keepalive_connections=concurrency, max_connections=concurrency),
        ) as client:
            if not await _wait_healthy(client, proc, errors):
                return {"error": "the server did not become healthy"}

            async def call(message: Any) -> Any:
                response = await client.post("/run", json={"input": message})
                response.raise_for_status()
                return response.json()["output"]

            children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            pids = {"server": [proc.pid], "child": children}
            seq = await _loop(call, n, warmup, pids)
            meter = CpuMeter({"this process": [os.getpid()], **pids})
            started = time.perf_counter()
            light = await anyio.to_thread.run_sync(_stdlib_client_loop, port, n, warmup)
            light_m = Measured(light, time.perf_counter() - started, meter.stop())
            lat: list[float] = []
            meter = CpuMeter({"this process": [os.getpid()], **pids})
            started = time.perf_counter()
            await _callers(call, n, concurrency, lat)
            conc = Measured(lat, time.perf_counter() - started, meter.stop())
            return {"route": "/run", "sequential": seq, "light": light_m, "concurrent": conc}
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.terminate()
                with anyio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def _stdlib_client_loop(port: int, n: int, warmup: int) -> list[float]:
    """Sequential calls from the lightest client at hand (stdlib http.client, keep-alive):
    its own cost is a small part of the figure, unlike httpx's."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"input": {}})
    headers = {"content-type": "application/json"}
    lat: list[float] = []
    try:
        for i in range(warmup + n):
            started = time.perf_counter()
            conn.request("POST", "/run", body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"POST /run answered {response.status}")
            if i >= warmup:
                lat.append(time.perf_counter() - started)
    finally:
        conn.close()
    return lat


async def _wait_healthy(client: Any, proc: Any, errors: Any) -> bool:
    """Wait until ``GET /health`` answers 200 (the app is ready)."""
    import anyio
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            errors.seek(0)
            log(f"serve exited with {proc.returncode}: {errors.read()[-2000:]}")
            return False
        try:
            if (await client.get("/health")).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        await anyio.sleep(0.05)
    return False


# -- main ---------------------------------------------------------------------------------------


def row(name: str, m: Measured, base_p50: float) -> tuple[list[str], dict[str, Any]]:
    s = summary(m.lat)
    calls = len(m.lat)
    cpu = {role: seconds / calls for role, seconds in m.cpu.items()}
    cells = [
        name,
        str(calls),
        us(s["median"]),
        us(s["p99"]),
        us(s["mean"]),
        f"{calls / m.wall:,.0f}",
        fx(ratio(s["median"], base_p50)),
        us(cpu.get("this process")),
        us(cpu.get("server")),
        us(cpu.get("child")),
    ]
    data = {**s, "throughput": calls / m.wall, "wall": m.wall, "cpu_per_call": cpu}
    return cells, data


def report_placed(placed: dict[str, dict[str, Measured]], results: dict[str, Any]) -> None:
    """The headline ratio with the scheduler's placement fixed, both ways."""
    if not placed:
        print("(Pinned rows skipped: they need two CPUs and sched_setaffinity.)\n")
        return
    rows, data = [], {}
    for name, runs in placed.items():
        pipe, floor, library = (median(runs[k].lat) for k in ("pipe", "asyncio_echo", "library"))
        rows.append(
            [
                name,
                us(pipe),
                us(floor),
                us(library),
                fx(ratio(library, pipe)),
                fx(ratio(floor, pipe)),
                fx(ratio(library, floor)),
            ]
        )
        data[name] = {key: summary(m.lat) for key, m in runs.items()}
    print_table(
        "With both processes pinned (sched_setaffinity)",
        [
            "placement",
            "Pipe p50 us",
            "asyncio echo p50 us",
            "library p50 us",
            "library / Pipe",
            "asyncio echo / Pipe",
            "library / asyncio echo",
        ],
        rows,
    )
    results["placed"] = data


def top_functions(stats: pstats.Stats, limit: int, sort: str, only: str | None = None) -> str:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    restrictions: list[Any] = [only, limit] if only else [limit]
    stats.sort_stats(sort).print_stats(*restrictions)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3000, help="measured calls per row")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured calls first")
    parser.add_argument("--quick", action="store_true", help="500 calls per row")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the supervisor and the child side too"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.warmup = min(args.runs, 500), min(args.warmup, 50)
    n = args.runs - args.runs % CONCURRENCY

    import anyio

    info = machine_info()
    print(f"# Call overhead (no-op round trip)\n\n{machine_line(info)}\n")
    started = time.monotonic()
    results: dict[str, Any] = {"machine": info, "settings": vars(args), "rows": {}}

    log("multiprocessing Pipe ping-pong")
    measured: dict[str, Measured | None] = {"pipe": bench_pipe(n, args.warmup)}

    async def layers() -> dict[str, Any]:
        out: dict[str, Any] = {}
        log("anyio subprocess msgpack echo")
        out["anyio_echo"] = await bench_anyio_echo(n, args.warmup)
        log("the same with an asyncio child")
        out["asyncio_echo"] = await bench_anyio_echo(n, args.warmup, child_loop=True)
        log("raw protocol (ChildChannel + child runtime)")
        out["raw"] = await bench_raw(n, args.warmup)
        log("library app.run(), 1 caller")
        out["lib1"] = await bench_library(n, args.warmup, 1)
        log(f"library app.run(), {CONCURRENCY} callers")
        out["lib8"] = await bench_library(n, args.warmup, CONCURRENCY)
        log("HTTP serve")
        out["http"] = await bench_http(n, args.warmup, CONCURRENCY)
        log("Pipe and library app.run() with both processes pinned")
        out["placed"] = await bench_placed(n, args.warmup)
        return out

    out = anyio.run(layers)
    if importlib.util.find_spec("uvloop") is not None:
        log("library app.run(), 1 caller, the supervisor's loop on uvloop")
        out["lib1_uv"] = anyio.run(
            bench_library, n, args.warmup, 1, backend_options={"use_uvloop": True}
        )
    http = out.pop("http")
    placed = out.pop("placed")
    measured.update(out)
    http_why = None
    if http is None or "error" in http:
        http_why = "not available (no supervisor/cli.py)" if http is None else http["error"]
    else:
        measured["http1"] = http["sequential"]
        measured["http1_light"] = http["light"]
        measured["http8"] = http["concurrent"]
    names = {
        "pipe": "multiprocessing Pipe ping-pong (baseline)",
        "anyio_echo": "anyio subprocess + msgpack echo",
        "asyncio_echo": "the same, the child on asyncio (a task per message)",
        "raw": "raw protocol: ChildChannel + child runtime",
        "lib1": "library app.run(), 1 caller",
        "lib1_uv": "library app.run(), 1 caller, supervisor on uvloop",
        "lib8": f"library app.run(), {CONCURRENCY} callers, max_concurrency={CONCURRENCY}",
        "http1": "HTTP serve POST /run, 1 client (httpx)",
        "http1_light": "HTTP serve POST /run, 1 client (stdlib http.client)",
        "http8": f"HTTP serve POST /run, {CONCURRENCY} clients",
    }
    pipe = measured["pipe"]
    assert pipe is not None
    base = summary(pipe.lat)["median"]
    rows = []
    for key, name in names.items():
        m = measured.get(key)
        if m is None:
            continue
        cells, data = row(name, m, base)
        rows.append(cells)
        results["rows"][key] = data
    if http_why:
        rows.append(["HTTP serve", why := http_why, *["-"] * 8])
        results["rows"]["http"] = {"available": False, "why": why}
    print_table(
        "Round trip of a no-op call",
        [
            "layer",
            "calls",
            "p50 us",
            "p99 us",
            "mean us",
            "calls/s",
            "p50 / Pipe p50",
            "CPU us/call: this process",
            "server",
            "child",
        ],
        rows,
    )
    lib_p50 = results["rows"]["lib1"]["median"]
    results["ratio_library_p50_over_pipe_p50"] = ratio(lib_p50, base)
    print(
        f"library p50 / Pipe p50 = {fx(ratio(lib_p50, base))} ({us(lib_p50)} us vs {us(base)} us)\n"
    )
    raw_p50 = results["rows"]["raw"]["median"]
    echo_p50 = results["rows"]["anyio_echo"]["median"]
    loop_echo_p50 = results["rows"]["asyncio_echo"]["median"]
    split = [
        ["process + pipes from blocking code (Pipe)", us(base)],
        ["+ caller's event loop, anyio streams, msgpack (anyio echo - Pipe)", us(echo_p50 - base)],
        [
            "+ an event loop in the child too (asyncio echo - anyio echo)",
            us(loop_echo_p50 - echo_p50),
        ],
        ["+ protocol + child runtime (raw - asyncio echo)", us(raw_p50 - loop_echo_p50)],
        ["+ supervisor App/Replica/queue/events (library - raw)", us(lib_p50 - raw_p50)],
        ["= library app.run() p50", us(lib_p50)],
    ]
    print_table("Where a call's time goes (differences of p50s)", ["step", "us"], split)
    results["split_us"] = {cells[0]: cells[1] for cells in split}
    report_placed(placed, results)

    if args.profile:
        anyio.run(profile_both, n, args.warmup, results)
    results["elapsed"] = time.monotonic() - started
    results["loadavg_at_end"] = os.getloadavg()
    print(f"Total benchmark time: {results['elapsed']:.1f} s")
    write_json("overhead", results)


async def profile_both(n: int, warmup: int, results: dict[str, Any]) -> None:
    log("profiling the supervisor side of app.run()")
    profile = cProfile.Profile()
    await bench_library(n, warmup, 1, profile=profile)
    results["profile_supervisor"] = profile_report(
        f"cProfile, supervisor process, {n} sequential app.run() calls",
        pstats.Stats(profile),
        r"(supervisor|protocol)/",
    )
    log("profiling the child side (raw protocol)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "child.prof")
        await bench_raw(n, warmup, profile_to=path)
        results["profile_child"] = profile_report(
            f"cProfile, child main thread, {n} calls (from its dispatch loop on)",
            pstats.Stats(path),
            r"(child|protocol)/",
        )


def profile_report(title: str, stats: pstats.Stats, ours_only: str) -> dict[str, str]:
    """Print the top functions by own time, and ours by cumulative time."""
    text = top_functions(stats, 15, "tottime")
    ours = top_functions(stats, 25, "cumulative", only=ours_only)
    print(
        f"\n### {title}\n\n"
        f"By own time:\n\n```\n{text}```\n\n"
        f"The project's functions by cumulative time:\n\n```\n{ours}```\n"
    )
    return {"tottime": text, "project_cumulative": ours}


if __name__ == "__main__":
    main()
