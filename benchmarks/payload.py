"""Payload: bytes in and out (an echo) of 1 KiB, 1 MiB and 64 MiB.

Run from the repository root::

    .venv/bin/python benchmarks/payload.py [--runs 30] [--quick]

benchmarks/apps/payload's ``run`` takes ``{"data": bytes}`` and returns it (msgpack
carries bytes as bin, no base64). Measured in the same run, for each size:

* ``multiprocessing Pipe`` (baseline): a spawn-context worker echoing
  ``{"data": bytes}`` over a ``multiprocessing.Pipe`` (pickle).
* ``anyio subprocess echo``: length-prefixed msgpack over a child's stdin/stdout,
  from an anyio event loop: the floor for an async pipe design.
* the same with both pipes enlarged to 1 MiB (``F_SETPIPE_SZ``; the default is
  64 KiB): what bigger pipe buffers would buy.
* ``raw protocol``: the real child runtime driven through ChildChannel (no App/Replica).
* ``library app.run()``: the public API, pool disabled.

Throughput is payload bytes per second of round trip (``size / p50``, MB = 10^6
bytes); every byte crosses the process boundary twice. ``--runs`` is the number of
round trips for 1 MiB; 1 KiB does 10x as many and 64 MiB max(3, runs / 6).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import (
    APPS_DIR,
    SpawnEchoWorker,
    fx,
    log,
    machine_info,
    machine_line,
    ms,
    print_table,
    ratio,
    summary,
    write_json,
)

APP = APPS_DIR / "payload"
SIZES = (("1 KiB", 1 << 10), ("1 MiB", 1 << 20), ("64 MiB", 64 << 20))


def peak_rss(pid: int) -> int | None:
    """The process's peak resident set (VmHWM), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def counts(runs: int) -> dict[str, int]:
    return {"1 KiB": runs * 10, "1 MiB": runs, "64 MiB": max(3, runs // 6)}


def check(out: Any, data: bytes) -> None:
    got = out["data"]
    if len(got) != len(data) or got[:16] != data[:16] or got[-16:] != data[-16:]:
        raise AssertionError("the echo differs from what was sent")


def sync_rounds(call: Callable[[Any], Any], data: bytes, n: int, child_pid: int) -> dict[str, Any]:
    out = call({"data": data})  # warm-up
    check(out, data)
    lat = []
    me, child = cpu_seconds(os.getpid()), cpu_seconds(child_pid)
    for _ in range(n):
        t = time.perf_counter()
        out = call({"data": data})
        lat.append(time.perf_counter() - t)
    check(out, data)
    return _result(lat, me, child, child_pid)


async def async_rounds(
    call: Callable[[Any], Awaitable[Any]], data: bytes, n: int, child_pid: int
) -> dict[str, Any]:
    out = await call({"data": data})  # warm-up
    check(out, data)
    lat = []
    me, child = cpu_seconds(os.getpid()), cpu_seconds(child_pid)
    for _ in range(n):
        t = time.perf_counter()
        out = await call({"data": data})
        lat.append(time.perf_counter() - t)
    check(out, data)
    return _result(lat, me, child, child_pid)


def _result(lat: list[float], me: float, child: float, child_pid: int) -> dict[str, Any]:
    n = len(lat)
    return {
        "latency": summary(lat),
        "cpu_this_process_per_call": (cpu_seconds(os.getpid()) - me) / n,
        "cpu_child_per_call": (cpu_seconds(child_pid) - child) / n,
        "child_peak_rss": peak_rss(child_pid),
    }


async def async_layers(payloads: dict[str, bytes], n: dict[str, int]) -> dict[str, Any]:
    import anyio
    from _common import make_supervisor
    from _raw import AnyioEcho, start_raw

    out: dict[str, Any] = {"anyio_echo": {}, "anyio_echo_1m": {}, "raw": {}, "library": {}}
    for key, pipe_size in (("anyio_echo", None), ("anyio_echo_1m", 1 << 20)):
        echo = await AnyioEcho.start(pipe_size=pipe_size)
        try:
            for label, data in payloads.items():
                log(f"{key} {label}")
                out[key][label] = await async_rounds(echo.call, data, n[label], echo.pid)
        finally:
            await echo.close()
    async with anyio.create_task_group() as tasks:
        child = await start_raw(tasks, APP, probe=False)
        try:
            for label, data in payloads.items():
                log(f"raw protocol {label}")
                out["raw"][label] = await async_rounds(child.run, data, n[label], child.process.pid)
        finally:
            await child.close()
        tasks.cancel_scope.cancel()
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APP, name="payload")
        pid = app.status()["pids"][0]
        for label, data in payloads.items():
            log(f"library {label}")
            out["library"][label] = await async_rounds(app.run, data, n[label], pid)
        await app.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="round trips of 1 MiB")
    parser.add_argument("--quick", action="store_true", help="--runs 6")
    args = parser.parse_args()
    if args.quick:
        args.runs = min(args.runs, 6)
    n = counts(args.runs)

    import anyio

    info = machine_info()
    print(f"# Payload round trip (bytes echo)\n\n{machine_line(info)}\n")
    started = time.monotonic()
    payloads = {label: os.urandom(size) for label, size in SIZES}
    results: dict[str, Any] = {"machine": info, "settings": {"runs": args.runs, "counts": n}}
    layers: dict[str, dict[str, Any]] = {"pipe": {}}
    with SpawnEchoWorker() as worker:
        for label, data in payloads.items():
            log(f"multiprocessing Pipe {label}")
            layers["pipe"][label] = sync_rounds(worker.call, data, n[label], worker.process.pid)
    layers.update(anyio.run(async_layers, payloads, n))

    names = {
        "pipe": "multiprocessing Pipe (baseline)",
        "anyio_echo": "anyio subprocess + msgpack echo",
        "anyio_echo_1m": "the same, 1 MiB pipe buffers (F_SETPIPE_SZ)",
        "raw": "raw protocol: ChildChannel + child runtime",
        "library": "library app.run()",
    }
    rows = []
    summary_rows = []
    for label, size in SIZES:
        base = layers["pipe"][label]["latency"]["median"]
        for key, name in names.items():
            r = layers[key][label]
            p50 = r["latency"]["median"]
            r["mb_per_s"] = size / p50 / 1e6
            r["ratio_to_pipe"] = ratio(p50, base)
            rss = r["child_peak_rss"]
            rows.append(
                [
                    label,
                    name,
                    r["latency"]["n"],
                    ms(p50, 2),
                    ms(r["latency"]["p90"], 2),
                    f"{r['mb_per_s']:,.1f}",
                    fx(r["ratio_to_pipe"]),
                    ms(r["cpu_this_process_per_call"], 2),
                    ms(r["cpu_child_per_call"], 2),
                    f"{rss / 2**20:,.0f}" if rss else "-",
                ]
            )
        lib = layers["library"][label]
        summary_rows.append(
            [
                label,
                f"{lib['mb_per_s']:,.1f}",
                f"{layers['pipe'][label]['mb_per_s']:,.1f}",
                fx(lib["ratio_to_pipe"]),
            ]
        )
    print_table(
        "Echo round trip",
        [
            "size",
            "layer",
            "trips",
            "p50 ms",
            "p90 ms",
            "MB/s",
            "p50 / Pipe p50",
            "CPU ms/trip: this process",
            "child",
            "child peak RSS MiB",
        ],
        rows,
    )
    print_table(
        "Library vs multiprocessing Pipe",
        ["size", "library MB/s", "Pipe MB/s", "library p50 / Pipe p50"],
        summary_rows,
    )
    results["layers"] = layers
    results["elapsed"] = time.monotonic() - started
    results["loadavg_at_end"] = os.getloadavg()
    print(f"Total benchmark time: {results['elapsed']:.1f} s")
    write_json("payload", results)


if __name__ == "__main__":
    main()
