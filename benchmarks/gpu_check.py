"""Real-GPU check of the VRAM monitor and budgets (needs an NVIDIA GPU and torch).

Starts two apps pinned to GPU 0 that hold real CUDA tensors, checks that the
supervisor's NVML figures see each child's memory, then drives one app over
its VRAM budget and checks that it is stopped with a budget error and
restarted on a new pid while the other keeps running. Last, it asks the other
app for more memory than the device has: torch's real CUDA out-of-memory error
must reach the caller as an out-of-memory error and restart that child.

Then the pre-started pool with torch imported: its idle children and an app's
standby must hold no CUDA context (NVML does not list them), an app loaded into
one must still be pinned as asked (to GPU 0, or to no GPU at all), and start to
first CUDA result is timed with and without the pool.

Last, device pressure and admission with real figures: with ``min_free_vram``
at 30% of the device, an allocation that leaves less free must unload the least
recently used idle app, skip a busy one, and unload nobody else; an app that
declares half the device must be admitted by unloading idle apps; one that
declares twice the device must be refused at once, without waiting out
``admission_timeout``.

Then the fork server with torch imported: the zygote must hold no CUDA context
and say it initialised none; a torch app forked from it (the pool drained
first, so that the start forks) must be pinned to its device, initialise CUDA
normally and allocate memory that NVML sees, while the zygote still holds no
context; a fork started with no GPU must see none. Start to first CUDA result
is timed for spawn, pool and fork.

Then swapping: two apps that each declare 60% of the device cannot both be
loaded, so the second one's admission evicts the first (its budget counts even
before it allocates), and each request for the unloaded one evicts the other;
NVML must then list only the child that holds the GPU. The swaps are timed.
Prints what it saw and exits non-zero if a check fails.

    python benchmarks/gpu_check.py [--fork-server | --swaps]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import anyio
import psutil

from supervisor import App, Supervisor
from supervisor import errors as E
from supervisor.gpu.backend import open_backend

APP = Path(__file__).resolve().parent / "apps" / "gpu_alloc"
MIB = 1024 * 1024


def check(ok: bool, what: str) -> None:
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        raise SystemExit(1)


async def budget_and_oom() -> None:
    async with Supervisor(monitor_interval=0.2, budget_grace=1.0, pool_size=0) as sup:
        check(sup.gpu_backend is not None, f"NVML backend: {sup.gpu_backend!r}")
        status = await sup.start(APP, name="steady", gpus=[0])
        hungry = await sup.start(APP, name="hungry", gpus=[0], vram_budget=2048 * MIB)
        steady_out = await status.run({"mib": 1024})
        first = await hungry.run({"mib": 512})
        print(json.dumps({"steady": steady_out, "hungry": first}, indent=1))
        check(steady_out["cuda_visible_devices"] == "0", "CUDA_VISIBLE_DEVICES pinned to 0")
        await anyio.sleep(1.0)
        replicas = {
            name: app.status()["replicas"][0]["memory"]
            for name, app in (("steady", status), ("hungry", hungry))
        }
        print(json.dumps({"memory": replicas, "gpus": sup.status()["gpus"]}, indent=1))
        steady_vram = (replicas["steady"] or {}).get("vram", 0)
        check(
            steady_vram >= 1024 * MIB, f"steady child's VRAM seen by NVML: {steady_vram // MIB} MiB"
        )
        started = time.monotonic()
        try:
            await hungry.run({"mib": 4096})
            await anyio.sleep(3.0)
            outcome = "no error on the request itself (stopped while idle)"
        except E.BudgetExceededError as exc:
            outcome = f"{type(exc).__name__}: {exc} {exc.details}"
        print("over-budget request:", outcome)
        with anyio.fail_after(30):
            while hungry.status()["restarts"] < 1:
                await anyio.sleep(0.1)
        print(f"restart observed after {time.monotonic() - started:.2f} s")
        print(json.dumps(hungry.status()["last_exit"], indent=1))
        check("budget" in hungry.status()["last_exit"]["reason"], "restart reason names the budget")
        again = await hungry.run({})
        check(again["pid"] != first["pid"], f"new pid {again['pid']} (was {first['pid']})")
        check(status.status()["restarts"] == 0, "the other app was left alone")

        total = sup.status()["gpus"][0]["total"]
        try:
            await status.run({"mib": 2 * total // MIB})
            check(False, "an allocation of twice the device's memory failed")
        except E.OutOfMemoryError as exc:
            print(f"over-device request: {type(exc).__name__}: {exc}")
            print(json.dumps(exc.details, indent=1, default=str)[:2000])
        with anyio.fail_after(30):
            while status.status()["restarts"] < 1:
                await anyio.sleep(0.1)
        print(json.dumps(status.status()["last_exit"], indent=1))
        fresh = await status.run({})
        check(fresh["pid"] != steady_out["pid"], f"restarted after the OOM on pid {fresh['pid']}")
        check(fresh["allocated_mib"] == 0, "the new child starts with no CUDA memory held")


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def nvml_pids(sup: Supervisor) -> set[int]:
    assert sup.gpu_backend is not None
    return set(sup.gpu_backend.sample().processes)


async def pool_idle(sup: Supervisor) -> None:
    with anyio.fail_after(120):
        while sup.pool.idle_count(("torch",)) < 1:
            await anyio.sleep(0.05)


async def pooled() -> None:
    async with Supervisor(monitor_interval=0.2, pool_size=1, pool_preload=["torch"]) as sup:
        await pool_idle(sup)
        idle = descendants()
        check(
            not idle & nvml_pids(sup),
            f"pooled children {sorted(idle)}, torch imported, hold no CUDA context "
            f"(NVML lists {sorted(nvml_pids(sup))})",
        )
        pinned = await sup.start(APP, name="pooled", gpus=[0], standby=True)
        probe = await pinned.run({}, function="probe")
        print(json.dumps(probe, indent=1))
        check(probe["pid"] in idle, f"the app was loaded into pooled child {probe['pid']}")
        check(
            probe["cuda_available"] and probe["device_count"] == 1,
            f"it sees one GPU (CUDA_VISIBLE_DEVICES={probe['cuda_visible_devices']!r})",
        )
        await pinned.run({"mib": 256})
        check(probe["pid"] in nvml_pids(sup), "after an allocation NVML lists it")
        with anyio.fail_after(120):
            while (standby := pinned.status()["replicas"][0]["standby_pid"]) is None:
                await anyio.sleep(0.05)
        await anyio.sleep(2.0)  # let the standby finish importing the app (and torch)
        check(standby not in nvml_pids(sup), f"its standby {standby} holds no CUDA context")
        await pool_idle(sup)
        hidden = await sup.start(APP, name="hidden", gpus=0)
        probe = await hidden.run({}, function="probe")
        print(json.dumps(probe, indent=1))
        check(
            not probe["cuda_available"] and probe["device_count"] == 0,
            f"a pooled child started with gpus=0 sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={probe['cuda_visible_devices']!r})",
        )


async def settled(sup: Supervisor) -> None:
    """The pool and its fork servers are ready for every key asked for."""
    with anyio.fail_after(300):
        while not sup.pool.settled():
            await anyio.sleep(0.05)


async def forked() -> None:
    async with Supervisor(monitor_interval=0.2, pool_size=1, pool_preload=["torch"]) as sup:
        await settled(sup)
        (server,) = sup.pool.status()["fork_servers"].values()
        zygote = server["pid"]
        check(
            zygote not in nvml_pids(sup),
            f"the fork server {zygote}, torch imported, holds no CUDA context",
        )
        await sup.pool.drain()  # the next start finds no idle child: it forks
        app = await sup.start(APP, name="forked", gpus=[0])
        start = app.status()["replicas"][0]["start"]
        check(start == "fork", f"the app's child was forked from the fork server ({start})")
        probe = await app.run({}, function="probe")
        print(json.dumps(probe, indent=1))
        check(not probe["cuda_initialized_before"], "the forked child inherited no CUDA state")
        check(
            probe["cuda_available"] and probe["device_count"] == 1,
            f"it sees one GPU (CUDA_VISIBLE_DEVICES={probe['cuda_visible_devices']!r})",
        )
        out = await app.run({"mib": 512})
        check(out["allocated_mib"] == 512, "it allocated 512 MiB on the GPU")
        check(out["cuda_visible_devices"] == "0", "pinned to GPU 0")
        await anyio.sleep(0.5)
        listed = nvml_pids(sup)
        check(probe["pid"] in listed, f"NVML lists the forked child ({sorted(listed)})")
        check(zygote not in listed, "the fork server still holds no CUDA context")
        await sup.pool.drain()
        hidden = await sup.start(APP, name="forked-hidden", gpus=0)
        probe = await hidden.run({}, function="probe")
        check(
            hidden.status()["replicas"][0]["start"] == "fork"
            and not probe["cuda_available"]
            and probe["device_count"] == 0,
            f"a fork started with gpus=0 sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={probe['cuda_visible_devices']!r})",
        )


async def cold_starts(runs: int = 3) -> None:
    """Start to ready and to the first CUDA result, torch app: spawned, from the
    pool, forked by the fork server."""
    rows = []
    for kind in ("spawn", "pool", "fork"):
        ready: list[float] = []
        first: list[float] = []
        options: dict[str, object] = {"pool_size": 0 if kind == "spawn" else 1}
        if kind != "spawn":
            options["fork_server"] = kind == "fork"
        for _ in range(runs):
            async with Supervisor(pool_preload=["torch"], **options) as sup:  # type: ignore[arg-type]
                if kind != "spawn":
                    await settled(sup)
                if kind == "fork":
                    await sup.pool.drain()
                started = time.monotonic()
                app = await sup.start(APP, name="cold", gpus=[0])
                ready.append(time.monotonic() - started)
                await app.run({"mib": 1})
                first.append(time.monotonic() - started)
                check(app.status()["replicas"][0]["start"] == kind, f"a {kind} start")
        rows.append((kind, statistics.median(ready), statistics.median(first)))
    print(f"\n| start | to ready (median of {runs}) | to first CUDA result |")
    print("|---|---|---|")
    for kind, ready_s, first_s in rows:
        print(f"| {kind} | {ready_s * 1000:.0f} ms | {first_s * 1000:.0f} ms |")


def device_total() -> int:
    """GPU 0's memory, from the backend the supervisor will use."""
    backend = open_backend()
    assert backend is not None
    try:
        device = backend.sample().device(0)
        assert device is not None
        return device.total
    finally:
        backend.close()


def states(apps: dict[str, App]) -> dict[str, str]:
    return {name: app.status()["replicas"][0]["state"] for name, app in apps.items()}


async def pressure_and_admission() -> None:
    total = device_total()
    min_free = int(0.3 * total)
    async with Supervisor(
        monitor_interval=0.2, pool_size=0, min_free_vram=min_free, admission_timeout=3.0
    ) as sup:
        apps: dict[str, App] = {}

        async def start(name: str) -> None:
            apps[name] = await sup.start(APP, name=name, gpus=[0])

        async with anyio.create_task_group() as tasks:
            for name in ("older", "newer", "hog"):
                tasks.start_soon(start, name)
        apps = {name: apps[name] for name in ("older", "newer", "hog")}
        await apps["older"].run({"mib": total // 8 // MIB})
        await apps["newer"].run({"mib": total // 8 // MIB})
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(partial(apps["older"].run, {"hold_s": 5.0}))
            await anyio.sleep(0.5)
            check(states(apps)["older"] == "busy", "older is busy")
            await apps["hog"].run({"mib": total // 2 // MIB})
            with anyio.fail_after(10):
                while states(apps)["newer"] != "unloaded":
                    await anyio.sleep(0.05)
            await anyio.sleep(2.0)  # ten more samples: nobody else may be unloaded
            print(json.dumps({"states": states(apps), "gpus": sup.status()["gpus"]}, indent=1))
            check(
                states(apps) == {"older": "busy", "newer": "unloaded", "hog": "ready"},
                "pressure unloaded the least recently used idle app only, not the busy one",
            )
            free = sup.status()["gpus"][0]["free"]
            check(free >= min_free, f"{free // MIB} MiB free, at least min_free_vram again")
        want = total // 2
        check(free - min_free < want, "half the device does not fit without unloading")
        big = await sup.start(APP, name="big", gpus=[0], vram_budget=want)
        print(json.dumps({"states": states(apps), "gpus": sup.status()["gpus"]}, indent=1))
        check(big.status()["ready"], "an app declaring half the device was admitted")
        check(states(apps)["hog"] == "unloaded", "the idle hog was unloaded to admit it")
        try:
            asked = time.monotonic()
            await sup.start(APP, name="huge", gpus=[0], vram_budget=2 * total)
            check(False, "an app declaring twice the device is refused")
        except E.AdmissionError as exc:
            print(f"{type(exc).__name__}: {exc}")
            check(
                str(exc).startswith("can never fit"),
                f"refused at once ({(time.monotonic() - asked) * 1000:.0f} ms), saying why",
            )


async def swaps(rounds: int = 2) -> None:
    total = device_total()
    use_mib = total // 2 // MIB // 2 * 2  # torch's allocator rounds large blocks up to 2 MiB
    async with Supervisor(
        monitor_interval=0.2, pool_size=1, pool_preload=["torch"], admission_timeout=60.0
    ) as sup:
        apps: dict[str, App] = {}
        for name in ("left", "right"):
            apps[name] = await sup.start(APP, name=name, gpus=[0], vram_budget=int(0.6 * total))
        check(
            states(apps) == {"left": "unloaded", "right": "ready"},
            "the second app's admission evicted the first, which had allocated nothing yet",
        )
        times = []
        for turn in range(2 * rounds):
            name, other = ("left", "right") if turn % 2 == 0 else ("right", "left")
            await pool_idle(sup)
            started = time.monotonic()
            out = await apps[name].run({"mib": use_mib})
            times.append(time.monotonic() - started)
            check(
                states(apps) == {name: "ready", other: "unloaded"},
                f"swap {turn + 1}: {name} in, {other} out ({times[-1] * 1000:.0f} ms)",
            )
            check(
                out["allocated_mib"] == use_mib,
                f"{name} holds {out['allocated_mib']} MiB of CUDA memory (asked for {use_mib})",
            )
            listed = nvml_pids(sup) & descendants()
            check(listed == {out["pid"]}, f"NVML lists only {name}'s child ({sorted(listed)})")
        print(json.dumps({"gpus": sup.status()["gpus"]}, indent=1))
        print(
            f"\nswap to a result with {use_mib} MiB allocated: median "
            f"{statistics.median(times) * 1000:.0f} ms over {len(times)} swaps"
        )


async def main() -> None:
    await budget_and_oom()
    await pooled()
    await forked()
    await pressure_and_admission()
    await swaps()
    await cold_starts()


if __name__ == "__main__":
    try:
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device: this check needs an NVIDIA GPU")
    except ImportError:
        sys.exit("torch is not installed: this check needs torch with CUDA")
    if sys.argv[1:] == ["--fork-server"]:  # only the fork server's checks and timings

        async def fork_server_only() -> None:
            await cold_starts()
            await forked()

        anyio.run(fork_server_only)
    elif sys.argv[1:] == ["--swaps"]:  # only the swaps
        anyio.run(swaps)
    else:
        anyio.run(main)
