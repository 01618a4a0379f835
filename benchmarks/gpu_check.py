"""Real-GPU check of the VRAM monitor and budgets (needs an NVIDIA GPU and torch).

Starts two apps pinned to GPU 0 that hold real CUDA tensors, checks that the
supervisor's NVML figures see each child's memory, then drives one app over
its VRAM budget and checks that it is stopped with a budget error and
restarted on a new pid while the other keeps running. Prints what it saw and
exits non-zero if a check fails.

    python benchmarks/gpu_check.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anyio

from supervisor import Supervisor
from supervisor import errors as E

APP = Path(__file__).resolve().parent / "apps" / "gpu_alloc"
MIB = 1024 * 1024


def check(ok: bool, what: str) -> None:
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        raise SystemExit(1)


async def main() -> None:
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


if __name__ == "__main__":
    try:
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device: this check needs an NVIDIA GPU")
    except ImportError:
        sys.exit("torch is not installed: this check needs torch with CUDA")
    anyio.run(main)
