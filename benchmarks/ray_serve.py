"""``serve --ray`` (Ray Serve, a local one-node cluster) next to ``serve``, one client.

Run from the repository root (needs the ray extra)::

    .venv/bin/python benchmarks/ray_serve.py [--calls 300] [--replicas 1]

For each of ``python -m supervisor serve examples/hello`` and the same with
``--ray`` (which starts a local Ray cluster: ``ray.init`` without a dashboard,
Serve's proxy and controller, then the replicas), in one run:

* cold start: from spawning the command to the first 200 of ``POST /run``, and
  the app's own ``cold_start`` figure from ``/health`` (the child's start in
  its replica, the same work in both);
* round trip of ``POST /run`` over one keep-alive ``httpx`` connection, sequential:
  median, p90, p99 of ``--calls`` calls after 20 warm-up calls.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
from _common import (
    ROOT,
    free_port,
    log,
    machine_info,
    machine_line,
    ms,
    print_table,
    summary,
    write_json,
)

APP = str(ROOT / "examples" / "hello")
BODY = {"input": {"name": "bench"}}


def measure(name: str, extra: list[str], calls: int) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "supervisor", "serve", APP, "--port", str(port), *extra]
    log(f"{name}: {' '.join(command[1:])}")
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
            if time.monotonic() - started > 180:
                raise RuntimeError(f"{name} did not answer within 180 s")
            try:
                if client.post("/run", json=BODY).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        cold = time.monotonic() - started
        app_cold = client.get("/health").json()["apps"]["hello"]["cold_start"]
        for _ in range(20):
            client.post("/run", json=BODY).raise_for_status()
        trips = []
        for _ in range(calls):
            t0 = time.perf_counter()
            client.post("/run", json=BODY).raise_for_status()
            trips.append(time.perf_counter() - t0)
        return {"cold_start": cold, "app_cold_start": app_cold, "round_trip": summary(trips)}
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    info = machine_info()
    print(machine_line(info))
    results = {
        "serve": measure("serve", [], args.calls),
        "serve --ray": measure(
            "serve --ray", ["--ray", "--replicas", str(args.replicas)], args.calls
        ),
    }
    print_table(
        f"serve vs serve --ray (local Ray, {args.replicas} replica(s)), examples/hello, "
        f"{args.calls} sequential POST /run",
        ["server", "spawn to first 200", "app cold start", "p50", "p90", "p99"],
        [
            [
                name,
                ms(r["cold_start"], 0),
                ms(r["app_cold_start"], 0),
                ms(r["round_trip"]["median"], 2),
                ms(r["round_trip"]["p90"], 2),
                ms(r["round_trip"]["p99"], 2),
            ]
            for name, r in results.items()
        ],
    )
    write_json("ray_serve", {"machine": info, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
