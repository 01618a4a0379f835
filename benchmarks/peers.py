"""Optional peers: the same cold start and call figures for a Ray actor.

Run from the repository root::

    .venv/bin/python benchmarks/peers.py [--runs 10] [--calls 3000] [--quick]

Skipped, with a note, when ``ray`` is not importable (it is not a dependency of this
project and is not installed by it). When it is: ``ray.init`` once (reported on its
own), then per run an actor's creation to its first answer (cold start), then the
round trip of ``ray.get(actor.run.remote(x))`` for a no-op (p50, p99, calls/s).
Compare with cold_start.py's "sup.start()" rows and overhead.py's "library" row.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from typing import Any

from _common import log, machine_info, machine_line, ms, print_table, summary, us, write_json


def ray_figures(runs: int, calls: int) -> dict[str, Any]:
    import ray

    started = time.monotonic()
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    init = time.monotonic() - started

    @ray.remote
    class Echo:
        def run(self, x: Any) -> Any:
            return x

    cold = []
    actor = None
    for _ in range(runs):
        started = time.monotonic()
        actor = Echo.remote()  # type: ignore[attr-defined]
        ray.get(actor.run.remote({"i": 0}))
        cold.append(time.monotonic() - started)
        ray.kill(actor)
    actor = Echo.remote()  # type: ignore[attr-defined]
    for i in range(200):
        ray.get(actor.run.remote({"i": i}))
    lat = []
    t0 = time.perf_counter()
    for i in range(calls):
        t = time.perf_counter()
        ray.get(actor.run.remote({"i": i}))
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {"init": init, "cold": summary(cold), "call": summary(lat), "throughput": calls / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="actor cold starts")
    parser.add_argument("--calls", type=int, default=3000, help="timed calls")
    parser.add_argument("--quick", action="store_true", help="--runs 3 --calls 500")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.calls = min(args.runs, 3), min(args.calls, 500)
    info = machine_info()
    print(f"# Peers\n\n{machine_line(info)}\n")
    results: dict[str, Any] = {"machine": info, "settings": vars(args)}
    if importlib.util.find_spec("ray") is None:
        print("Ray: not installed, skipped (`pip install ray` to compare).\n")
        results["ray"] = {"available": False}
    else:
        log("ray")
        r = ray_figures(args.runs, args.calls)
        results["ray"] = {"available": True, **r}
        print_table(
            "Ray actor",
            ["figure", "p50", "p90/p99"],
            [
                ["ray.init() (once)", f"{ms(r['init'])} ms", ""],
                [
                    "actor creation -> first answer",
                    f"{ms(r['cold']['median'])} ms",
                    f"p90 {ms(r['cold']['p90'])} ms",
                ],
                [
                    "no-op call round trip",
                    f"{us(r['call']['median'])} us",
                    f"p99 {us(r['call']['p99'])} us",
                ],
                ["calls/s (1 caller)", f"{r['throughput']:,.0f}", ""],
            ],
        )
    write_json("peers", results)


if __name__ == "__main__":
    main()
