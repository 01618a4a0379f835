"""Recovery: from SIGKILL of a ready child to the next good result, and what a kill loses.

Run from the repository root::

    .venv/bin/python benchmarks/recovery.py [--runs 10] [--requests 1000] [--kills 10] [--quick]

1. ``kill -> next result``: a ready child is SIGKILLed and the caller immediately
   asks again (retrying at once on ChildCrashedError, which a request that reached
   the dead child gets) until a result comes back. Median of ``--runs`` kills, for
   benchmarks/apps/noop_async with the pool disabled and with the default pre-start
   pool, and for benchmarks/apps/numpy_app (numpy imported when the app loads) with
   the pool; then both apps again with ``standby=True`` (a spare child with the app
   loaded, which the restart only sets up; each kill waits until it is loaded).
   The cold start of the same app is measured in the same run, to ready
   and to its first result; the ratio compares like with like: kill -> next result
   over start -> first result. Also in the same run, the kernel's part: from
   SIGKILL of a pre-started child (runtime imported, no app) to the end of its
   stdout, the first moment any supervisor can know that it died.
2. ``stream``: ``--requests`` requests from 4 concurrent callers to an app with
   max_concurrency=1 (so most wait in the queue), each sleeping ``--delay`` seconds in
   the child, while a separate task SIGKILLs the ready child ``--kills`` times at
   random moments (at random positions between 5% and 90% of the stream). Every
   request ends as one of: succeeded (with the right output); failed with
   ChildCrashedError (it was in flight at a kill: at most one per kill); or LOST (any
   other error, a wrong output, or no answer within 60 s), which must be 0. The
   stream's supervisor keeps its default pool setting.

Both parts use ``RestartPolicy(max_restarts=10000, window=0.1)`` so that the
supervisor never gives up and every kill is a "first crash in the window", which
the policy restarts at once (its base delay, 0.1 s, applies only to kills closer
together than the window).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    APPS_DIR,
    fx,
    log,
    machine_info,
    machine_line,
    median,
    ms,
    p90,
    print_table,
    ratio,
    summary,
    write_json,
)

APP = APPS_DIR / "noop_async"
CALLERS = 4


WINDOW = 0.1


def policy() -> Any:
    from supervisor import RestartPolicy

    return RestartPolicy(max_restarts=10_000, window=WINDOW)


async def ready_pid(app: Any, timeout: float = 30.0, *, busy_ok: bool = False) -> int:
    """The pid of the app's child once it is ready (or serving, with ``busy_ok``)."""
    import anyio

    states = ("ready", "busy") if busy_ok else ("ready",)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = app.status()
        if status["state"] in states and status["pids"]:
            return int(status["pids"][0])
        await anyio.sleep(0.001)
    raise TimeoutError("the app did not become ready")


@dataclass(frozen=True)
class Target:
    """An app to kill, with an input for call ``i`` and a check of its output."""

    name: str
    path: Path
    input: Callable[[int], dict[str, Any]]
    ok: Callable[[dict[str, Any], int], bool]


NOOP = Target("noop_async", APP, lambda i: {"i": i}, lambda out, i: out["i"] == i)
NUMPY = Target(
    "numpy_app",
    APPS_DIR / "numpy_app",
    lambda i: {"n": i % 16},
    lambda out, i: out["total"] == sum(range(i % 16)),
)


async def recovery_times(
    pool_size: int, runs: int, target: Target = NOOP, standby: bool = False
) -> dict[str, Any]:
    """Kill a ready child ``runs`` times; time each kill -> next good result.

    With ``standby``, each kill waits until the app's standby is loaded first."""
    import anyio
    from _common import make_supervisor, wait_pool_ready

    from supervisor import errors as E

    times: list[float] = []
    retries: list[int] = []
    options = {"standby": True} if standby else {}
    last_kill = 0.0
    async with make_supervisor(pool_size=pool_size, restart_policy=policy()) as sup:
        app = await sup.start(target.path, name="recovery", **options)
        for i in range(runs):
            await app.run(target.input(-1))
            if pool_size:
                await wait_pool_ready(sup)
            if standby:
                await standby_loaded(app)
            # Two kills within the policy's window would time its back-off instead.
            await anyio.sleep(max(0.0, last_kill + 2 * WINDOW - time.monotonic()))
            pid = await ready_pid(app)
            started = last_kill = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            failed = 0
            while True:
                try:
                    out = await app.run(target.input(i))
                except E.ChildCrashedError:
                    failed += 1
                    continue
                assert target.ok(out, i), out
                break
            times.append(time.monotonic() - started)
            retries.append(failed)
            new_pid = await ready_pid(app)
            assert new_pid != pid, "the child was not replaced"
        restarts = app.status()["restarts"]
        await app.stop()
    return {"times": times, "crashed_retries": retries, "restarts": restarts}


async def standby_loaded(app: Any, timeout: float = 30.0) -> None:
    import anyio

    with anyio.fail_after(timeout):
        while app.status()["replicas"][0].get("standby_pid") is None:
            await anyio.sleep(0.001)


def has_standby() -> bool:
    import inspect

    from supervisor import Supervisor

    return "standby" in inspect.signature(Supervisor.start).parameters


async def cold_starts(pool_size: int, runs: int, target: Target = NOOP) -> dict[str, list[float]]:
    """``sup.start()`` to ready, and to the first result."""
    from _common import make_supervisor, wait_pool_ready

    ready, first = [], []
    async with make_supervisor(pool_size=pool_size, restart_policy=policy()) as sup:
        for i in range(runs):
            if pool_size:
                await wait_pool_ready(sup)
            started = time.monotonic()
            app = await sup.start(target.path, name=f"cold-{i}")
            ready.append(time.monotonic() - started)
            assert target.ok(await app.run(target.input(i)), i)
            first.append(time.monotonic() - started)
            await app.stop()
    return {"ready": ready, "first_result": first}


async def kernel_teardown(runs: int) -> list[float]:
    """SIGKILL of a child with the runtime imported and no app -> end of its stdout.

    The child is started as ``_raw.RawChild`` starts one, without the pool's
    shared-memory arenas; measured alone, the arenas did not change this time.
    """
    import anyio
    from _raw import RawChild

    times = []
    for _ in range(runs):
        async with anyio.create_task_group() as tasks:
            child = await RawChild.spawn(tasks, cwd=APP, probe=False)
            await anyio.sleep(0.05)
            started = time.monotonic()
            os.kill(child.process.pid, signal.SIGKILL)
            await child.channel.closed.wait()
            times.append(time.monotonic() - started)
            await child.close()
    return times


TEARDOWN_CASES = {
    "bare interpreter": "",
    "child runtime imported": "import child.runtime, protocol.connection\n",
    "bare + 20 MiB bytearray": "held = bytearray(20 << 20)\n",
    "bare + 50 MiB bytearray": "held = bytearray(50 << 20)\n",
    "bare + 100 MiB bytearray": "held = bytearray(100 << 20)\n",
}
"""What a process holds when it is killed: the kernel frees its memory before it
closes its files, so the end of stdout comes later the more it holds."""

_REPORT_ANON = (
    "import re, sys\n"
    "text = open('/proc/self/smaps_rollup').read()\n"
    "print(int(re.search(r'Anonymous:\\s+(\\d+)', text).group(1)), flush=True)\n"
    "sys.stdin.read()\n"
)


def teardown_by_memory(runs: int) -> dict[str, dict[str, Any]]:
    """SIGKILL -> end of stdout for plain interpreters holding more or less memory.

    Linux only (the anonymous memory is read from ``/proc/self/smaps_rollup``)."""
    import subprocess
    import sys

    results = {}
    for name, code in TEARDOWN_CASES.items():
        times, anon_kib = [], 0
        for _ in range(runs):
            process = subprocess.Popen(
                [sys.executable, "-c", code + _REPORT_ANON],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=Path(__file__).resolve().parent.parent,
            )
            assert process.stdout is not None
            anon_kib = int(process.stdout.readline())
            time.sleep(0.05)
            started = time.monotonic()
            os.kill(process.pid, signal.SIGKILL)
            process.stdout.read()
            times.append(time.monotonic() - started)
            process.wait()
            process.stdout.close()
            assert process.stdin is not None
            process.stdin.close()
        results[name] = {"anon_mib": anon_kib / 1024, "times": times}
    return results


async def stream(
    requests: int, kills: int, delay: float, pool_size: int | None, seed: int
) -> dict[str, Any]:
    import anyio
    from _common import make_supervisor

    from supervisor import errors as E

    rng = random.Random(seed)
    outcomes: dict[int, str] = {}
    lost_detail: dict[str, int] = {}
    kill_log: list[dict[str, Any]] = []
    next_request = 0
    done = anyio.Event()

    kwargs: dict[str, Any] = {"restart_policy": policy()}
    if pool_size is not None:
        kwargs["pool_size"] = pool_size
    async with make_supervisor(**kwargs) as sup:
        app = await sup.start(APP, name="stream", max_concurrency=1)

        async def one(i: int) -> None:
            try:
                with anyio.fail_after(60):
                    out = await app.run({"i": i, "delay": delay})
            except TimeoutError:
                outcomes[i] = "lost"
                key = "no answer within 60 s"
                lost_detail[key] = lost_detail.get(key, 0) + 1
                return
            except E.SupervisorError as exc:
                if type(exc) is E.ChildCrashedError:
                    outcomes[i] = "crashed"
                else:
                    outcomes[i] = "lost"
                    key = f"{type(exc).__name__}: {exc.message[:80]}"
                    lost_detail[key] = lost_detail.get(key, 0) + 1
                return
            if out.get("i") == i:
                outcomes[i] = "ok"
            else:
                outcomes[i] = "lost"
                lost_detail["wrong output"] = lost_detail.get("wrong output", 0) + 1

        async def caller() -> None:
            nonlocal next_request
            while next_request < requests:
                i = next_request
                next_request += 1
                await one(i)

        async def killer() -> None:
            # Kill at random positions of the stream (5% .. 90%), each at a random
            # moment within a request: positions, not times, so that every kill
            # lands inside the stream however fast this machine is.
            low, high = int(requests * 0.05), max(int(requests * 0.9), int(requests * 0.05) + kills)
            targets = sorted(rng.sample(range(low, high), kills))
            for target in targets:
                while next_request < target and not done.is_set():
                    await anyio.sleep(0.0005)
                await anyio.sleep(rng.uniform(0, delay))
                pid = await ready_pid(app, busy_ok=True)  # a stream keeps it busy
                if done.is_set():
                    return
                kill_log.append({"at_request": next_request, "pid": pid})
                os.kill(pid, signal.SIGKILL)

        started = time.monotonic()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(killer)
            async with anyio.create_task_group() as callers:
                for _ in range(CALLERS):
                    callers.start_soon(caller)
            done.set()
            tasks.cancel_scope.cancel()
        elapsed = time.monotonic() - started
        status = app.status()
        await app.stop()
    missing = requests - len(outcomes)
    counts = {k: sum(1 for v in outcomes.values() if v == k) for k in ("ok", "crashed", "lost")}
    counts["lost"] += missing
    if missing:
        lost_detail["no outcome recorded"] = missing
    return {
        "requests": requests,
        "kills_requested": kills,
        "kills_done": len(kill_log),
        "restarts": status["restarts"],
        "final_state": status["state"],
        "elapsed": elapsed,
        "succeeded": counts["ok"],
        "failed_child_crashed": counts["crashed"],
        "lost": counts["lost"],
        "lost_detail": lost_detail,
        "kill_log": kill_log,
    }


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from _common import supervisor_kwargs

    has_pool = "pool_size" in supervisor_kwargs()
    out: dict[str, Any] = {"has_pool": has_pool}
    log("cold starts, pool_size=0")
    out["cold_nopool"] = await cold_starts(0, args.runs)
    log("kill -> next result, pool_size=0")
    out["recovery_nopool"] = await recovery_times(0, args.runs)
    if has_pool:
        log("cold starts, warm pool")
        out["cold_pool"] = await cold_starts(1, args.runs)
        log("kill -> next result, warm pool")
        out["recovery_pool"] = await recovery_times(1, args.runs)
        log("cold starts and kill -> next result, warm pool, numpy_app")
        out["cold_pool_numpy"] = await cold_starts(1, args.runs, NUMPY)
        out["recovery_pool_numpy"] = await recovery_times(1, args.runs, NUMPY)
    out["has_standby"] = has_standby()
    if out["has_standby"]:
        log("kill -> next result, warm pool, standby=True")
        out["recovery_standby"] = await recovery_times(1, args.runs, standby=True)
        log("kill -> next result, warm pool, standby=True, numpy_app")
        out["recovery_standby_numpy"] = await recovery_times(1, args.runs, NUMPY, standby=True)
    log("kernel: SIGKILL -> end of stdout")
    out["kernel_teardown"] = await kernel_teardown(args.runs)
    if os.path.exists("/proc/self/smaps_rollup"):
        log("kernel: SIGKILL -> end of stdout, by the memory held")
        out["teardown_by_memory"] = teardown_by_memory(args.runs)
    log(f"stream: {args.requests} requests, {args.kills} kills")
    out["stream"] = await stream(args.requests, args.kills, args.delay, None, args.seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="kills timed (and cold starts)")
    parser.add_argument("--requests", type=int, default=1000, help="requests in the stream")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs during the stream")
    parser.add_argument(
        "--delay", type=float, default=0.002, help="seconds each stream request sleeps in the child"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed for the kill times")
    parser.add_argument("--quick", action="store_true", help="--runs 3 --requests 300 --kills 3")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.requests, args.kills = (
            min(args.runs, 3),
            min(args.requests, 300),
            min(args.kills, 3),
        )

    import anyio

    info = machine_info()
    print(f"# Recovery from SIGKILL\n\n{machine_line(info)}\n")
    started = time.monotonic()
    out = anyio.run(run_all, args)

    def row(name: str, recovery: dict[str, Any], cold: dict[str, list[float]]) -> list[Any]:
        times = recovery["times"]
        return [
            name,
            len(times),
            ms(median(times)),
            ms(p90(times)),
            ms(median(cold["ready"])),
            ms(median(cold["first_result"])),
            fx(ratio(median(times), median(cold["first_result"]))),
            sum(recovery["crashed_retries"]),
        ]

    cold0 = out["cold_nopool"]
    rows = [row("noop_async, pool_size=0", out["recovery_nopool"], cold0)]
    if out["has_pool"]:
        rows.append(row("noop_async, warm pool", out["recovery_pool"], out["cold_pool"]))
        rows.append(row("numpy_app, warm pool", out["recovery_pool_numpy"], out["cold_pool_numpy"]))
    if out["has_pool"] and out["has_standby"]:
        rows.append(
            row("noop_async, warm pool, standby", out["recovery_standby"], out["cold_pool"])
        )
        rows.append(
            row(
                "numpy_app, warm pool, standby",
                out["recovery_standby_numpy"],
                out["cold_pool_numpy"],
            )
        )
    teardown = out["kernel_teardown"]
    print_table(
        "SIGKILL of a ready child -> next successful result",
        [
            "app, supervisor",
            "kills",
            "recovery p50 ms",
            "recovery p90 ms",
            "cold start to ready p50 ms",
            "cold start to first result p50 ms",
            "recovery / cold start to first result",
            "requests that hit the dead child",
        ],
        rows,
    )
    print(
        f"The kernel's part, in the same run: SIGKILL of a pre-started child -> end of its "
        f"stdout, p50 {ms(median(teardown))} ms, p90 {ms(p90(teardown))} ms "
        f"({len(teardown)} kills). No supervisor can know of a death sooner.\n"
    )
    by_memory = out.get("teardown_by_memory")
    if by_memory:
        print_table(
            "SIGKILL -> end of stdout, by the anonymous memory the process holds",
            ["process", "anonymous MiB", "p50 ms", "p90 ms"],
            [
                [name, f"{r['anon_mib']:.1f}", ms(median(r["times"])), ms(p90(r["times"]))]
                for name, r in by_memory.items()
            ],
        )
    s = out["stream"]
    print_table(
        f"Request stream with random kills ({CALLERS} callers, max_concurrency=1, "
        f"{args.delay * 1000:g} ms per request)",
        [
            "requests",
            "kills",
            "restarts",
            "succeeded",
            "failed: ChildCrashedError (in flight)",
            "LOST",
            "elapsed s",
        ],
        [
            [
                s["requests"],
                s["kills_done"],
                s["restarts"],
                s["succeeded"],
                s["failed_child_crashed"],
                s["lost"],
                f"{s['elapsed']:.2f}",
            ]
        ],
    )
    if s["lost_detail"]:
        print(f"LOST detail: {s['lost_detail']}\n")
    results: dict[str, Any] = {
        "machine": info,
        "settings": vars(args),
        "cold_start_nopool": {k: summary(v) for k, v in cold0.items()},
        "recovery_nopool": summary(out["recovery_nopool"]["times"]),
        "recovery_nopool_raw": out["recovery_nopool"],
        "kernel_teardown": summary(teardown),
        "stream": s,
    }
    if by_memory:
        results["teardown_by_memory"] = {
            name: {"anon_mib": r["anon_mib"], **summary(r["times"])}
            for name, r in by_memory.items()
        }
    if out["has_pool"]:
        for key in ("cold_pool", "cold_pool_numpy"):
            results[key] = {k: summary(v) for k, v in out[key].items()}
        for key in (
            "recovery_pool",
            "recovery_pool_numpy",
            "recovery_standby",
            "recovery_standby_numpy",
        ):
            if key in out:
                results[key] = summary(out[key]["times"])
                results[f"{key}_raw"] = out[key]
    results["elapsed"] = time.monotonic() - started
    results["loadavg_at_end"] = os.getloadavg()
    print(f"Total benchmark time: {results['elapsed']:.1f} s")
    write_json("recovery", results)
    if s["lost"]:
        raise SystemExit(f"{s['lost']} request(s) LOST")


if __name__ == "__main__":
    main()
