"""Swapping: a request for an app that was evicted to make room for another.

Run from the repository root::

    .venv/bin/python benchmarks/swap.py [--runs 10] [--quick]

Two copies of tests/apps/mem_gpu each declare 6 GiB of VRAM on one fake 8 GiB
GPU (the fake NVML backend, ``SUPERVISOR_FAKE_NVML``; setup "allocates" the
6 GiB), so only one is loaded at a time: each request for the other one evicts
the idle one (an ``unload``, then the child's exit and reap), admits the
requested app again and starts it. This measures what the supervisor adds to a
model swap; with real models, loading the weights comes on top.

Rows, medians of ``--runs`` swaps, the baselines measured in the same run:

* ``call, no swap``: a request for the loaded app.
* ``cold start``: ``sup.start()`` to its first result on an empty GPU, from the
  pre-start pool (the default), and without it.
* ``swap``: a request for the evicted app, with a pause before each so that the
  pool has refilled, and without the pause (swaps faster than the pool refills
  get a child forked by the fork server, the default; with ``--no-fork-server``
  rows, ``fork_server=False``, they fall back to spawning), and with ``pool_size=0``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    log,
    machine_info,
    machine_line,
    median,
    ms,
    p90,
    print_table,
    summary,
    write_json,
)

APP = ROOT / "tests" / "apps" / "mem_gpu"
GIB = 1 << 30
BUDGET = {"vram_budget": 6 * GIB, "setup": {"vram_mib": 6144}, "gpus": 1}


def fake_gpu(directory: Path) -> None:
    path = directory / "nvml.json"
    device = {"index": 0, "name": "Fake GPU 0", "total_mib": 8192}
    path.write_text(json.dumps({"devices": [device], "processes": {}}))
    os.environ["SUPERVISOR_FAKE_NVML"] = str(path)


def _options(pool_size: int, fork_server: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"pool_size": pool_size, "monitor_interval": 0.1}
    if not fork_server:
        options["fork_server"] = False
    return options


async def cold_starts(pool_size: int, runs: int, fork_server: bool = True) -> list[float]:
    import anyio
    from _common import make_supervisor, wait_pool_ready

    times = []
    async with make_supervisor(**_options(pool_size, fork_server)) as sup:
        for _ in range(runs):
            if pool_size:
                await wait_pool_ready(sup)
            await anyio.sleep(0.1)
            started = time.monotonic()
            app = await sup.start(APP, name="cold", **BUDGET)
            await app.run({})
            times.append(time.monotonic() - started)
            await app.stop()
    return times


async def swaps(
    pool_size: int, runs: int, pause: float, fork_server: bool = True
) -> dict[str, list[float]]:
    import anyio
    from _common import make_supervisor, wait_pool_ready

    swapped, calls = [], []
    async with make_supervisor(**_options(pool_size, fork_server)) as sup:
        apps = [await sup.start(APP, name=name, **BUDGET) for name in ("a", "b")]
        for i in range(runs + 1):
            wanted = apps[i % 2]
            assert wanted.status()["state"] == "unloaded", wanted.status()["state"]
            if pause and pool_size:
                await wait_pool_ready(sup)
            await anyio.sleep(pause)
            started = time.monotonic()
            await wanted.run({})
            if i:  # the first swap also pays for the pool's first refill
                swapped.append(time.monotonic() - started)
            for _ in range(5):
                started = time.monotonic()
                await wanted.run({})
                calls.append(time.monotonic() - started)
    return {"swap": swapped, "call": calls}


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    log("cold starts, warm pool")
    out["cold_pool"] = await cold_starts(1, args.runs)
    log("cold starts, pool_size=0")
    out["cold_nopool"] = await cold_starts(0, max(3, args.runs // 3))
    log("swaps, warm pool")
    out["swap_pool"] = await swaps(1, args.runs, args.pause)
    log("swaps, warm pool, no pause")
    out["swap_pool_nopause"] = await swaps(1, args.runs, 0.0)
    if args.fork_server_rows:
        log("cold starts, warm pool, no fork server")
        out["cold_pool_nofork"] = await cold_starts(1, args.runs, fork_server=False)
        log("swaps, warm pool, no pause, no fork server")
        out["swap_pool_nopause_nofork"] = await swaps(1, args.runs, 0.0, fork_server=False)
    log("swaps, pool_size=0")
    out["swap_nopool"] = await swaps(0, max(3, args.runs // 3), args.pause)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="swaps timed per row")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds before each swap")
    parser.add_argument("--quick", action="store_true", help="--runs 3")
    parser.add_argument(
        "--no-fork-server-rows",
        dest="fork_server_rows",
        action="store_false",
        help="skip the rows with fork_server=False (for a checkout without one)",
    )
    args = parser.parse_args()
    from _common import supervisor_kwargs

    args.fork_server_rows = args.fork_server_rows and "fork_server" in supervisor_kwargs()
    if args.quick:
        args.runs = min(args.runs, 3)

    import anyio

    info = machine_info()
    print(f"# Swapping apps that do not fit on the GPU together\n\n{machine_line(info)}\n")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        fake_gpu(Path(directory))
        out = anyio.run(run_all, args)
    cold = median(out["cold_pool"])
    rows = [
        ["call, no swap", out["swap_pool"]["call"], "-"],
        ["cold start to first result, warm pool", out["cold_pool"], "1.0x"],
        ["cold start to first result, pool_size=0", out["cold_nopool"], None],
        [f"swap, warm pool ({args.pause:g} s between swaps)", out["swap_pool"]["swap"], None],
        ["swap, warm pool, back to back", out["swap_pool_nopause"]["swap"], None],
        ["swap, pool_size=0", out["swap_nopool"]["swap"], None],
    ]
    if args.fork_server_rows:
        rows[3:3] = [
            ["cold start to first result, warm pool, no fork server", out["cold_pool_nofork"], None]
        ]
        rows.insert(
            -1,
            [
                "swap, warm pool, back to back, no fork server",
                out["swap_pool_nopause_nofork"]["swap"],
                None,
            ],
        )
    print_table(
        "A request for an evicted app (6 GiB each on a fake 8 GiB GPU)",
        ["what", "n", "p50 ms", "p90 ms", "p50 / warm-pool cold start"],
        [
            [name, len(times), ms(median(times), 2), ms(p90(times), 2), rel or _x(times, cold)]
            for name, times, rel in rows
        ],
    )
    results = {
        "machine": info,
        "settings": vars(args),
        "call": summary(out["swap_pool"]["call"]),
        "cold_start_pool": summary(out["cold_pool"]),
        "cold_start_nopool": summary(out["cold_nopool"]),
        "swap_pool": summary(out["swap_pool"]["swap"]),
        "swap_pool_back_to_back": summary(out["swap_pool_nopause"]["swap"]),
        "swap_nopool": summary(out["swap_nopool"]["swap"]),
        **(
            {
                "cold_start_pool_no_fork_server": summary(out["cold_pool_nofork"]),
                "swap_pool_back_to_back_no_fork_server": summary(
                    out["swap_pool_nopause_nofork"]["swap"]
                ),
            }
            if args.fork_server_rows
            else {}
        ),
        "elapsed": time.monotonic() - started,
    }
    print(f"Total benchmark time: {results['elapsed']:.1f} s")
    write_json("swap", results)


def _x(times: list[float], reference: float) -> str:
    return f"{median(times) / reference:.1f}x"


if __name__ == "__main__":
    main()
