"""Recovery: from SIGKILL of a ready child to the next good result, and what a kill loses.

Run from the repository root::

    .venv/bin/python benchmarks/recovery.py [--runs 10] [--requests 1000] [--kills 10] [--quick]

1. ``kill -> next result``: a ready child of benchmarks/apps/noop_async is SIGKILLed
   and the caller immediately asks again (retrying at once on ChildCrashedError, which
   a request that reached the dead child gets) until a result comes back. Median of
   ``--runs`` kills, with the pool disabled and (when this checkout has one) with the
   default pre-start pool. The cold start (``sup.start()`` to ready) of the same app is
   measured in the same run, for the ratio.
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


def policy() -> Any:
    from supervisor import RestartPolicy

    return RestartPolicy(max_restarts=10_000, window=0.1)


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


async def recovery_times(pool_size: int, runs: int) -> dict[str, Any]:
    """Kill a ready child ``runs`` times; time each kill -> next good result."""
    from _common import make_supervisor, wait_pool_ready

    from supervisor import errors as E

    times: list[float] = []
    retries: list[int] = []
    async with make_supervisor(pool_size=pool_size, restart_policy=policy()) as sup:
        app = await sup.start(APP, name="recovery")
        for i in range(runs):
            await app.run({"i": -1})
            if pool_size:
                await wait_pool_ready(sup)
            pid = await ready_pid(app)
            started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            failed = 0
            while True:
                try:
                    out = await app.run({"i": i})
                except E.ChildCrashedError:
                    failed += 1
                    continue
                assert out["i"] == i
                break
            times.append(time.monotonic() - started)
            retries.append(failed)
            new_pid = await ready_pid(app)
            assert new_pid != pid, "the child was not replaced"
        restarts = app.status()["restarts"]
        await app.stop()
    return {"times": times, "crashed_retries": retries, "restarts": restarts}


async def cold_starts(pool_size: int, runs: int) -> list[float]:
    from _common import make_supervisor, wait_pool_ready

    out = []
    async with make_supervisor(pool_size=pool_size, restart_policy=policy()) as sup:
        for i in range(runs):
            if pool_size:
                await wait_pool_ready(sup)
            started = time.monotonic()
            app = await sup.start(APP, name=f"cold-{i}")
            out.append(time.monotonic() - started)
            await app.stop()
    return out


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

    rows = []
    cold0 = out["cold_nopool"]
    rec0 = out["recovery_nopool"]["times"]
    rows.append(
        [
            "pool_size=0",
            len(rec0),
            ms(median(rec0)),
            ms(p90(rec0)),
            ms(median(cold0)),
            fx(ratio(median(rec0), median(cold0))),
            sum(out["recovery_nopool"]["crashed_retries"]),
        ]
    )
    if out["has_pool"]:
        cold1 = out["cold_pool"]
        rec1 = out["recovery_pool"]["times"]
        rows.append(
            [
                "warm pool (pool_size=1)",
                len(rec1),
                ms(median(rec1)),
                ms(p90(rec1)),
                ms(median(cold1)),
                fx(ratio(median(rec1), median(cold1))),
                sum(out["recovery_pool"]["crashed_retries"]),
            ]
        )
        rows.append(
            [
                "warm-pool recovery vs pool_size=0 cold start",
                "",
                "",
                "",
                "",
                fx(ratio(median(rec1), median(cold0))),
                "",
            ]
        )
    print_table(
        "SIGKILL of a ready child -> next successful result",
        [
            "supervisor",
            "kills",
            "recovery p50 ms",
            "recovery p90 ms",
            "cold start p50 ms (same run)",
            "recovery / cold start",
            "requests that hit the dead child",
        ],
        rows,
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
    results = {
        "machine": info,
        "settings": vars(args),
        "cold_start_nopool": summary(cold0),
        "recovery_nopool": summary(rec0),
        "recovery_nopool_raw": out["recovery_nopool"],
        "ratio_recovery_over_cold_nopool": ratio(median(rec0), median(cold0)),
        "stream": s,
    }
    if out["has_pool"]:
        results["cold_start_pool"] = summary(out["cold_pool"])
        results["recovery_pool"] = summary(out["recovery_pool"]["times"])
        results["recovery_pool_raw"] = out["recovery_pool"]
    results["elapsed"] = time.monotonic() - started
    results["loadavg_at_end"] = os.getloadavg()
    print(f"Total benchmark time: {results['elapsed']:.1f} s")
    write_json("recovery", results)
    if s["lost"]:
        raise SystemExit(f"{s['lost']} request(s) LOST")


if __name__ == "__main__":
    main()
