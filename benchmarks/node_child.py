"""The JavaScript child next to the Python one: cold start, pooled start, no-op call.

Run from the repository root::

    .venv/bin/python benchmarks/node_child.py [--runs 10] [--calls 1000] [--quick]

For ``apps/noop_async`` (Python, a pydantic model) and ``apps/node_noop`` (Node.js,
a Zod schema), interleaved round by round so that machine noise hits both alike:

* ``cold start``: ``sup.start()`` to ready (load and setup done) with ``pool_size=0``;
* ``pooled start``: the same with a pre-started child of the app's runtime waiting
  in the pool (the pool refills between rounds);
* ``no-op call``: ``app.run()`` round trip, p50 and p99 over ``--calls`` calls.

Baselines in the same run: ``python -c pass``, ``node -e 0`` and node importing
zod (what a node child of this app cannot avoid). The Node app's npm packages are
installed before timing starts (they are cached; see supervisor/environments/node_packages.py).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from _common import (
    APPS_DIR,
    log,
    machine_info,
    machine_line,
    make_supervisor,
    median,
    ms,
    p99,
    print_table,
    us,
    write_json,
)

APPS = {"python": APPS_DIR / "noop_async", "node": APPS_DIR / "node_noop"}
POOL_LABEL = {"python": "(none)", "node": "node:(none)"}


def time_command(argv: Sequence[str], runs: int, cwd: Path | None = None) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, cwd=cwd, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


async def cold_start(app_dir: Path) -> float:
    async with make_supervisor(gpu_backend=None, pool_size=0) as sup:
        started = time.perf_counter()
        app = await sup.start(app_dir)
        elapsed = time.perf_counter() - started
        await app.stop()
    return elapsed


async def wait_idle(sup: Any, label: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not sup.pool.status()["idle"].get(label):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not pre-start a {label} child")
        await anyio.sleep(0.01)


async def pooled_starts(app_dir: Path, label: str, runs: int) -> list[float]:
    times = []
    async with make_supervisor(gpu_backend=None, pool_size=1) as sup:
        await (await sup.start(app_dir, name="warm-up")).stop()  # makes the pool want this runtime
        for i in range(runs):
            await wait_idle(sup, label)
            await anyio.sleep(0.2)  # let the refilled child settle
            started = time.perf_counter()
            app = await sup.start(app_dir, name=f"run-{i}")
            times.append(time.perf_counter() - started)
            await app.stop()
    return times


async def calls(app_dir: Path, count: int) -> list[float]:
    async with make_supervisor(gpu_backend=None, pool_size=0) as sup:
        app = await sup.start(app_dir)
        for i in range(50):
            await app.run({"i": i})
        times = []
        for i in range(count):
            started = time.perf_counter()
            await app.run({"i": i})
            times.append(time.perf_counter() - started)
    return times


async def measure(runs: int, count: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {k: {"cold": [], "calls": []} for k in APPS}
    for round_ in range(runs):
        log(f"cold starts, round {round_ + 1}/{runs}")
        for runtime, app_dir in APPS.items():
            results[runtime]["cold"].append(await cold_start(app_dir))
    for runtime, app_dir in APPS.items():
        log(f"pooled starts and calls: {runtime}")
        results[runtime]["pooled"] = await pooled_starts(app_dir, POOL_LABEL[runtime], runs)
        results[runtime]["calls"] = await calls(app_dir, count)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="3 runs, 200 calls")
    args = parser.parse_args(argv)
    runs, count = (3, 200) if args.quick else (args.runs, args.calls)
    node = shutil.which("node")
    if node is None:
        print("node is not installed: nothing to compare", file=sys.stderr)
        return 0
    from supervisor.environments.app_config import open_app_dir
    from supervisor.environments.node_runtime import prepare_node_app

    packages = prepare_node_app(*open_app_dir(APPS["node"])).env["APPVISOR_NODE_PACKAGE_DIR"]
    info = machine_info()
    print(machine_line(info))
    base: dict[str, Callable[[], list[float]]] = {
        "`python -c pass`": lambda: time_command([sys.executable, "-c", "pass"], runs),
        "`node -e 0`": lambda: time_command([node, "-e", "0"], runs),
        "`node` importing zod (what node_noop imports)": lambda: time_command(
            [node, "--input-type=module", "-e", 'await import("zod")'], runs, cwd=Path(packages)
        ),
    }
    baselines = {name: fn() for name, fn in base.items()}
    results = anyio.run(measure, runs, count)
    rows = [[name, ms(median(times)), "", ""] for name, times in baselines.items()]
    for runtime, figures in results.items():
        rows.append(
            [
                f"{runtime} child ({APPS[runtime].name})",
                ms(median(figures["cold"])),
                ms(median(figures["pooled"]), 2),
                f"{us(median(figures['calls']))} / {us(p99(figures['calls']))}",
            ]
        )
    print_table(
        f"Node.js child next to the Python child (medians of {runs} starts, {count} calls)",
        ["", "cold start to ready", "pooled start to ready", "no-op call p50 / p99 (us)"],
        rows,
    )
    write_json("node_child", {"machine": info, "baselines": baselines, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
