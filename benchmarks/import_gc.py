"""What the cyclic garbage collector costs the start's imports.

Run from the repository root::

    .venv/bin/python benchmarks/import_gc.py [--runs 12]

``python -m child``, ``python -m supervisor`` and the fork servers import with the
collector off and turn it back on after (``child/__main__.py``,
``supervisor/__main__.py``, ``child/fork_server.py``). Each chain here is run in
a fresh interpreter with the collector on and with it off, alternated run by run,
and timed from the spawn to the exit: the child's (the runtime's imports, the
asyncio backend, the first-use costs a pooled child pays), ``serve``'s (the
supervisor's and the HTTP server's imports) and, where torch and
sentence_transformers are installed, a torch fork server's preloads, which end
with one full collection when the collector was off (as the fork server does).
Medians, and off / on.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time

from _common import ROOT, log, machine_info, machine_line, median, ms, print_table, write_json

CHAINS = {
    "child": (
        "import asyncio, anyio, anyio._backends._asyncio, pydantic, msgpack\n"
        "import child.log_capture, child.outbox, child.runtime, child.prewarm\n"
        "child.prewarm.prewarm()"
    ),
    "serve": (
        "import supervisor.cli, anyio._backends._asyncio, uvicorn\n"
        "from supervisor.http.server import create_app"
    ),
    "torch fork server": "import torch, sentence_transformers",
}


def run_chain(code: str, collector_off: bool) -> float:
    if collector_off:
        code = f"import gc\ngc.disable()\n{code}\ngc.collect()\ngc.freeze()\ngc.enable()"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12, help="runs of each chain and setting")
    args = parser.parse_args()
    info = machine_info()
    print(f"# Imports with and without the garbage collector\n\n{machine_line(info)}\n")
    chains = dict(CHAINS)
    if not all(importlib.util.find_spec(m) for m in ("torch", "sentence_transformers")):
        del chains["torch fork server"]
    rows, results = [], {}
    for name, code in chains.items():
        runs = args.runs if name != "torch fork server" else max(3, args.runs // 2)
        times: dict[bool, list[float]] = {False: [], True: []}
        for off in (False, True):  # compile the bytecode, untimed
            run_chain(code, off)
        for i in range(runs):
            log(f"{name}: {i + 1}/{runs}")
            for off in (False, True) if i % 2 == 0 else (True, False):
                times[off].append(run_chain(code, off))
        on, off = median(times[False]), median(times[True])
        rows.append((name, ms(on), ms(off), f"{off / on:.3f}"))
        results[name] = {"on": times[False], "off": times[True]}
    print_table(
        f"Medians of {args.runs} alternated runs (the torch chain: half as many)",
        ["import chain", "collector on (ms)", "collector off (ms)", "off / on"],
        rows,
    )
    write_json("import_gc", {"machine": info, "runs": args.runs, "times": results})


if __name__ == "__main__":
    main()
