"""A bounded hostile load against ``serve``: what it costs, and that it leaves no trace.

Run from the repository root::

    .venv/bin/python benchmarks/hostile_load.py [--requests 1000] [--clients 8] [--quick]

Starts ``python -m supervisor serve tests/apps/robust`` with small limits
(64 KiB bodies, 1 s header and body timeouts, a 2 s run timeout), then has
``--clients`` threads send ``--requests`` requests between them, drawn from a
fixed mix: normal calls, bodies nested 500 and 20,000 levels deep, bodies over
the size limit, NaN and huge timeouts, invalid setup values, ids ``.`` and
``..``, calls abandoned by their client after 0.2 s (a function that ignores
the cancel, so the child is killed), slow-loris connections that never finish
their headers, and bodies that stall. Every answer must be the expected 4xx or
a 200; afterwards a normal call must succeed and ``/health`` be 200. Reported:
counts by kind and status, the server's RSS and open fds before and after (and
after a second, idle settling), the app's restarts by reason, and whether the
app is still ``ready``. Bounded in count and time; only loopback is touched.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import psutil
from _common import ROOT, free_port, log, machine_info, machine_line, print_table, write_json

KINDS = (
    "ok",
    "deep_500",
    "deep_20000",
    "too_large",
    "nan_timeout",
    "huge_timeout",
    "bad_setup",
    "dot_id",
    "abandoned",
    "slow_headers",
    "stalled_body",
)
EXPECTED = {
    "ok": {200},
    "deep_500": {422},
    "deep_20000": {400},
    "too_large": {413},
    "nan_timeout": {400},
    "huge_timeout": {200},
    "bad_setup": {422},
    "dot_id": {422},
    "abandoned": {-1},  # the client leaves: no status
    "slow_headers": {-2},  # closed by the server
    "stalled_body": {408},
}


def nested(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def send(client: httpx.Client, url: str, kind: str) -> int:
    """One request of ``kind``; its HTTP status, or -1 (abandoned), -2 (cut by the server)."""
    headers = {"Content-Type": "application/json"}
    bodies = {
        "ok": b'{"input": {"text": "x"}}',
        "deep_500": f'{{"input": {{"extra": {nested(500)}}}}}'.encode(),
        "deep_20000": f'{{"input": {{"extra": {nested(20_000)}}}}}'.encode(),
        "too_large": b'{"input": {"text": "' + b"x" * 100_000 + b'"}}',
        "nan_timeout": b'{"input": {}, "timeout": NaN}',
        "huge_timeout": b'{"input": {"text": "y"}, "timeout": 100000}',
        "bad_setup": b'{"input": {}, "setup": {"greeting": 5}}',
        "dot_id": b'{"input": {}, "request_id": ".."}',
    }
    if kind in bodies:
        return client.post(f"{url}/run", content=bodies[kind], headers=headers).status_code
    host, port = url.removeprefix("http://").split(":")
    if kind == "abandoned":
        try:
            client.post(f"{url}/run/sync_sleep", json={"input": {"seconds": 30}}, timeout=0.2)
        except httpx.TimeoutException:
            return -1
        return 0
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(15)
        if kind == "slow_headers":
            sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\n")
        else:  # stalled_body
            sock.sendall(
                b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if not answer:
        return -2
    return int(answer.split(b" ", 2)[1])


def server_figures(pid: int) -> dict[str, int]:
    process = psutil.Process(pid)
    return {"rss": process.memory_info().rss, "fds": process.num_fds()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="400 requests")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    total = 400 if args.quick else args.requests
    print(machine_line(machine_info()))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable, "-m", "supervisor", "serve", str(ROOT / "tests/apps/robust"),
        "--port", str(port), "--max-body-size", "64K", "--header-timeout", "1",
        "--body-timeout", "1", "--run-timeout", "2", "--log-level", "info",
    ]  # fmt: skip
    server_log = tempfile.NamedTemporaryFile("w+", prefix="hostile-load-", suffix=".log")  # noqa: SIM115 - read on failure, removed at exit
    server = subprocess.Popen(argv, cwd=ROOT, stdout=server_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        with httpx.Client(timeout=30) as warm:
            for _ in range(20):
                warm.post(f"{url}/run", json={"input": {"text": "warm"}})
        before = server_figures(server.pid)
        rng = random.Random(args.seed)
        # Mostly normal calls, each hostile kind a few percent; abandoned calls
        # cost a child each, so they are the rarest.
        weights = [40, 6, 4, 6, 6, 4, 6, 6, 1, 2, 2]
        plan = rng.choices(KINDS, weights=weights, k=total)
        counts: collections.Counter[tuple[str, int]] = collections.Counter()
        lock = threading.Lock()
        started = time.monotonic()

        def worker(share: list[str]) -> None:
            with httpx.Client(timeout=30) as client:
                for kind in share:
                    status = send(client, url, kind)
                    with lock:
                        counts[(kind, status)] += 1

        threads = [
            threading.Thread(target=worker, args=(plan[i :: args.clients],))
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        elapsed = time.monotonic() - started
        after = server_figures(server.pid)
        time.sleep(3)  # children killed for abandoned calls restart; idle connections close
        settled = server_figures(server.pid)
        with httpx.Client(timeout=30) as client:
            final = client.post(f"{url}/run", json={"input": {"text": "after"}}).status_code
            health = client.get(f"{url}/health")
        status = health.json()["apps"]["robust"]
    finally:
        server.terminate()
        code = server.wait(60)
    unexpected = {k: n for k, n in counts.items() if k[1] not in EXPECTED[k[0]]}
    rows = [
        (kind, status, n, "yes" if status in EXPECTED[kind] else "NO")
        for (kind, status), n in sorted(counts.items())
    ]
    print_table(
        f"{total} requests from {args.clients} clients in {elapsed:.1f} s",
        ("kind", "status", "count", "expected"),
        rows,
    )
    mib = 2**20
    print_table(
        "The server process",
        ("when", "RSS MiB", "open fds"),
        [
            ("before (after 20 warm-up calls)", f"{before['rss'] / mib:.1f}", before["fds"]),
            ("right after the load", f"{after['rss'] / mib:.1f}", after["fds"]),
            ("3 s later", f"{settled['rss'] / mib:.1f}", settled["fds"]),
        ],
    )
    print_table(
        "Afterwards",
        ("normal call", "/health", "app state", "restarts by reason", "server exit"),
        [(final, health.status_code, status["state"], status["restarts_by_reason"], code)],
    )
    write_json(
        "hostile_load",
        {
            "requests": total,
            "clients": args.clients,
            "elapsed": elapsed,
            "counts": {f"{k}:{s}": n for (k, s), n in counts.items()},
            "unexpected": {f"{k}:{s}": n for (k, s), n in unexpected.items()},
            "server": {"before": before, "after": after, "settled": settled},
            "final_call": final,
            "health": health.status_code,
            "app": {"state": status["state"], "restarts": status["restarts_by_reason"]},
            "exit_code": code,
            "machine": machine_info(),
        },
    )
    if unexpected or final != 200 or health.status_code != 200 or code != 0:
        server_log.seek(0)
        log(server_log.read()[-6000:])
        log(f"FAILED: unexpected answers {json.dumps({str(k): n for k, n in unexpected.items()})}")
        sys.exit(1)
    log(f"pid {os.getpid()} done")


if __name__ == "__main__":
    main()
