"""Cold start: from ``sup.start()`` to ready, to setup done and to the first result.

Run from the repository root::

    .venv/bin/python benchmarks/cold_start.py [--runs 10] [--heavy-runs 3] [--quick]

For each app (benchmarks/apps/empty, benchmarks/apps/numpy_app and a CPU torch
embedding app when torch is importable) it measures, interleaving the variants in
every round so that machine noise hits them alike:

* ``probe``: the start sequence of ``supervisor/core/replica.py`` reproduced step by step
  (ChildProcess + ChildChannel + protocol messages), timestamped at spawn, at the
  child's first Python statement, at hello, after load, after setup and at the first
  result. This gives the breakdown: interpreter start, runtime imports, app import,
  setup, first call.
* ``probe, cached bytecode``: the same with compiled bytecode for the runtime's own
  modules (``PYTHONPYCACHEPREFIX``), to show what compiling the source checkout's
  ``.py`` files costs when ``PYTHONDONTWRITEBYTECODE`` is set.
* ``sup.start(), no pool``: the public API with ``Supervisor(pool_size=0)``.
* ``sup.start(), warm pool``: the public API with a filled pre-start pool (if this
  checkout's ``Supervisor`` takes ``pool_size``), and with ``pool_preload`` of the
  app's heavy modules where supported.

Baselines measured in the same run: a bare interpreter importing the same
third-party modules (``python -c "import pydantic, msgpack, anyio, yaml[, numpy]"``),
and a ``multiprocessing`` spawn-context worker that imports them and answers one
message over a Pipe; both again after defining one pydantic model (as every app
does), and the worker once more answering from inside ``asyncio.run`` (as a
server of async apps must). A one-off ``python -X importtime`` profile of the runtime's
imports says where the import time goes.

The fork server section (``--fork-server-only`` runs it alone; skipped where
``Supervisor`` takes no ``fork_server``) compares three ways to start, each with
the app's heavy modules preloaded where it preloads: ``spawn`` (``pool_size=0``),
``pool`` (a warm pre-start pool, ``fork_server=False``) and ``fork`` (a warm
fork server with the pool emptied first, so that the start is forked):

* (a) the embedding app (``examples/embeddings``) to its first result;
* (b) ten starts of benchmarks/apps/empty issued at once, until all are ready;
* (d) each fork server's idle memory (RSS and USS) and CPU over a few seconds,
  beside an idle pre-started child's.

(c), swaps back to back with the fork server, is ``benchmarks/swap.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    APPS_DIR,
    ROOT,
    RUNTIME_THIRD_PARTY,
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
    supervisor_kwargs,
    time_bare_interpreter,
    time_mp_cold_start,
    write_json,
)

MP_BASELINE = "baseline: multiprocessing spawn worker + Pipe answer"
MP_MODEL_BASELINE = "baseline: the same worker + one pydantic model"
MP_ASYNC_BASELINE = "baseline: the same worker + one model, answering from asyncio.run"
PYCACHE_PREFIX = Path(tempfile.gettempdir()) / "appvisor-bench-pycache"
PROBE_PHASES = (
    ("interpreter", "spawn_call", "up"),
    ("runtime imports", "up", "hello"),
    ("app import (load)", "hello", "loaded"),
    ("setup", "loaded", "set_up"),
    ("first run", "set_up", "first_result"),
)


@dataclass
class AppCase:
    key: str
    app_dir: Path
    input: dict[str, Any]
    modules: tuple[str, ...]
    """Third-party modules the app imports (for the baselines and the pool preload)."""
    heavy: bool = False
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def add(self, variant: str, sample: dict[str, float]) -> None:
        self.samples.setdefault(variant, []).append(sample)


# -- the cases -------------------------------------------------------------------------


def embedding_case() -> AppCase | None:
    """examples/embeddings (or another CPU torch example under examples/)."""
    if importlib.util.find_spec("torch") is None:
        log("torch is not importable: skipping the embedding app")
        return None
    candidates = [ROOT / "examples" / "embeddings", *sorted((ROOT / "examples").glob("*embed*"))]
    app_dir = next((d for d in candidates if (d / "inference.py").is_file()), None)
    if app_dir is None:
        log("no embedding example under examples/: skipping it")
        return None
    source = (app_dir / "inference.py").read_text()
    modules = []
    for name in ("inferencesh", "torch", "sentence_transformers", "transformers", "numpy"):
        if name == "torch" or re.search(rf"^\s*(from|import)\s+{name}\b", source, re.M):
            modules.append(name)
    sample = app_dir / "input.json"
    data = json.loads(sample.read_text()) if sample.is_file() else {}
    return AppCase(app_dir.name, app_dir, data, (*RUNTIME_THIRD_PARTY, *modules), heavy=True)


def sample_input(schema: dict[str, Any]) -> dict[str, Any]:
    """A minimal valid-looking input from a JSON schema (required fields only)."""
    out: dict[str, Any] = {}
    props = schema.get("properties", {})
    for name in schema.get("required", []):
        prop = props.get(name, {})
        kind = prop.get("type")
        if kind == "array":
            out[name] = ["hello world"]
        elif kind == "integer":
            out[name] = 1
        elif kind == "number":
            out[name] = 1.0
        elif kind == "boolean":
            out[name] = False
        else:
            out[name] = "hello world"
    return out


# -- the measurements --------------------------------------------------------------------


async def probe(case: AppCase, *, cached_bytecode: bool = False) -> dict[str, float]:
    import anyio
    from _raw import RawChild

    from supervisor.environments.app_config import read_manifest

    env_extra: dict[str, str] = dict(read_manifest(case.app_dir).env)  # as sup.start() does
    drop: tuple[str, ...] = ()
    if cached_bytecode:
        env_extra["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
        drop = ("PYTHONDONTWRITEBYTECODE",)
    async with anyio.create_task_group() as tasks:
        child = await RawChild.spawn(tasks, cwd=case.app_dir, env_extra=env_extra, drop_env=drop)
        try:
            description = await child.load(case.app_dir)
            await child.setup({})
            if not case.input and case.heavy:
                schema = description["functions"]["run"]["input_schema"]
                case.input = sample_input(schema)
            await child.run(case.input)
            child.marks["first_result"] = time.monotonic()
            up = child.interpreter_up()
        finally:
            await child.close()
        tasks.cancel_scope.cancel()
    marks = child.marks
    if up is not None:
        marks["up"] = up
    sample = {
        name: marks[end] - marks[start]
        for name, start, end in PROBE_PHASES
        if start in marks and end in marks
    }
    sample["spawn syscall"] = marks["spawned"] - marks["spawn_call"]
    sample["ready"] = marks["set_up"] - marks["spawn_call"]
    sample["first result"] = marks["first_result"] - marks["spawn_call"]
    return sample


async def public_start(sup: Any, case: AppCase, name: str) -> dict[str, float]:
    started = time.monotonic()
    app = await sup.start(case.app_dir, name=name)
    ready = time.monotonic()
    try:
        await app.run(case.input)
        first = time.monotonic()
        cold = app.status().get("cold_start")
    finally:
        await app.stop()
    sample = {"ready": ready - started, "first result": first - started}
    sample["first run"] = first - ready
    if cold is not None:
        sample["status cold_start"] = float(cold)
    return sample


async def measure(args: argparse.Namespace, cases: list[AppCase]) -> dict[str, Any]:
    import anyio
    from _common import make_supervisor, supervisor_kwargs, wait_pool_ready

    accepted = supervisor_kwargs()
    has_pool = "pool_size" in accepted
    has_preload = "pool_preload" in accepted
    if not has_pool:
        log("Supervisor() has no pool_size in this checkout: skipping the pool rows")

    async def bare(modules: tuple[str, ...], model: bool = False) -> float:
        return await anyio.to_thread.run_sync(time_bare_interpreter, modules, model)

    async def mp(modules: tuple[str, ...], model: bool = False, loop: bool = False) -> float:
        return await anyio.to_thread.run_sync(time_mp_cold_start, modules, model, loop)

    interpreter_only: list[float] = []
    async with make_supervisor(pool_size=0) as nopool:
        for case in cases:
            runs = args.heavy_runs if case.heavy else args.runs
            if runs <= 0:
                continue
            if not case.heavy or not case.input:
                log(f"{case.key}: warming up")
                await probe(case)  # page cache, and the input of an app with no input.json
            bytecode = not case.heavy and not args.no_bytecode_row
            if bytecode:
                await probe(case, cached_bytecode=True)  # fills PYCACHE_PREFIX
            safe = pool_safe_env(case.app_dir)
            if has_pool and not safe:
                case.notes.append(
                    "No pool rows: the app's inf.yml env sets variables read at start-up "
                    "(supervisor.process.pool.pool_safe() is False), so sup.start() never uses a "
                    "pooled child for it."
                )
            async with (
                _maybe(
                    has_pool and safe and not case.heavy, lambda: make_supervisor(pool_size=1)
                ) as pool,
                _maybe(
                    has_pool
                    and safe
                    and has_preload
                    and len(case.modules) > len(RUNTIME_THIRD_PARTY),
                    lambda c=case: make_supervisor(
                        pool_size=1, pool_preload=list(c.modules[len(RUNTIME_THIRD_PARTY) :])
                    ),
                ) as pool_pre,
            ):

                async def quiesce(pool: Any = pool, pool_pre: Any = pool_pre) -> None:
                    # A pool refills in the background after each take: let it finish
                    # so that its CPU use does not land in the next measurement.
                    for sup in (pool, pool_pre):
                        if sup is not None:
                            await wait_pool_ready(sup, timeout=120)

                for i in range(runs):
                    log(f"{case.key}: round {i + 1}/{runs}")
                    await quiesce()
                    case.add("probe (replica.py sequence, no pool)", await probe(case))
                    if bytecode:
                        case.add(
                            "probe, cached bytecode",
                            await probe(case, cached_bytecode=True),
                        )
                    case.add(
                        "sup.start(), pool_size=0",
                        await public_start(nopool, case, f"bench-{i}"),
                    )
                    if pool is not None and not case.heavy:
                        waited = await wait_pool_ready(pool)
                        sample = await public_start(pool, case, f"bench-{i}")
                        sample["pool refill wait"] = waited
                        case.add("sup.start(), warm pool", sample)
                        await quiesce()
                    if pool_pre is not None:
                        waited = await wait_pool_ready(pool_pre, timeout=120)
                        sample = await public_start(pool_pre, case, f"bench-{i}")
                        sample["pool refill wait"] = waited
                        mods = ",".join(case.modules[len(RUNTIME_THIRD_PARTY) :])
                        case.add(f"sup.start(), warm pool, preload={mods}", sample)
                        await quiesce()
                    t = await bare(case.modules)
                    case.add(
                        f"baseline: python -c 'import {', '.join(case.modules)}'",
                        {
                            "ready": t,
                            "first result": t,
                        },
                    )
                    t = await mp(case.modules)
                    case.add(MP_BASELINE, {"ready": t, "first result": t})
                    if not case.heavy:
                        t = await bare(case.modules, True)
                        case.add(
                            "baseline: the same python -c + one pydantic model",
                            {
                                "ready": t,
                                "first result": t,
                            },
                        )
                        t = await mp(case.modules, True)
                        case.add(MP_MODEL_BASELINE, {"ready": t, "first result": t})
                        t = await mp(case.modules, True, True)
                        case.add(MP_ASYNC_BASELINE, {"ready": t, "first result": t})
                    if not case.heavy:
                        interpreter_only.append(await bare(()))
    return {"has_pool": has_pool, "has_preload": has_preload, "interpreter_only": interpreter_only}


# -- the fork server -----------------------------------------------------------------

START_KINDS = ("spawn", "pool", "fork")
HEAVY_KINDS = (*START_KINDS, "learned")
"""``learned``: a fork server with no configured preloads that learned the app's
imports from its first (warm-up) start, kept in a fresh file."""
BURST = 10
IDLE_WINDOW = 3.0
"""Seconds over which an idle fork server's CPU time is measured."""


def start_options(kind: str, preload: tuple[str, ...] = ()) -> dict[str, Any]:
    if kind == "spawn":
        return {"pool_size": 0}
    if kind == "learned":
        learned = Path(tempfile.mkdtemp(prefix="cold-start-learned-")) / "learned.json"
        return {"pool_size": 1, "fork_server": True, "learn_preloads": str(learned)}
    options = {"pool_size": 1, "pool_preload": list(preload), "fork_server": kind == "fork"}
    if "learn_preloads" in supervisor_kwargs():
        options["learn_preloads"] = False  # the configured preloads only
    return options


async def settle(sup: Any, timeout: float = 300.0) -> None:
    """Wait until the pool (and its fork servers) are ready for every key asked for."""
    import anyio

    with anyio.fail_after(timeout):
        while not sup.pool.settled():
            await anyio.sleep(0.02)
    await anyio.sleep(0.05)


async def start_as(
    sup: Any, kind: str, case: AppCase, name: str, others: list[Any] | None = None
) -> dict[str, float]:
    """One start to first result, the pool settled first (and those of ``others``,
    whose refills would take the CPU: a heavy spawned refill takes seconds); a
    ``fork`` start finds the pool drained, so that its child is forked."""
    for each in [sup, *(others or [])]:
        if each.pool.size > 0:
            await settle(each)
    if kind in ("fork", "learned"):
        await sup.pool.drain()
    return await public_start(sup, case, name)


async def burst(sup: Any, kind: str, app_dir: Path, round_: int) -> float:
    """Seconds from issuing ``BURST`` starts at once until all are ready."""
    import anyio

    if kind != "spawn":
        await settle(sup)
    apps: list[Any] = []

    async def start(i: int) -> None:
        apps.append(await sup.start(app_dir, name=f"burst-{round_}-{i}"))

    started = time.monotonic()
    async with anyio.create_task_group() as tasks:
        for i in range(BURST):
            tasks.start_soon(start, i)
    elapsed = time.monotonic() - started
    async with anyio.create_task_group() as tasks:
        for app in apps:
            tasks.start_soon(app.stop)
    return elapsed


def idle_cost(pid: int, descendants: bool = True) -> dict[str, float]:
    """RSS, USS and CPU share of an idle process, with its descendants (a pooled
    child is its reaper and the runtime below it; a fork server's are the
    children it forked, counted apart), over ``IDLE_WINDOW`` seconds."""
    import psutil

    top = psutil.Process(pid)
    procs = [top, *(top.children(recursive=True) if descendants else [])]
    before = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    time.sleep(IDLE_WINDOW)
    after = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    memory = [p.memory_full_info() for p in procs]
    return {
        "rss": sum(m.rss for m in memory),
        "uss": sum(m.uss for m in memory),
        "cpu": (after - before) / IDLE_WINDOW,
    }


IN_PROCESS = """
import asyncio, importlib, json, os, sys, time
from child.app_loader import load_app
from child.runtime import _call
app_dir, data = sys.argv[1], json.loads(sys.argv[2])
for name in sys.argv[3:]:
    importlib.import_module(name)
os.chdir(app_dir)
sys.path.insert(0, app_dir)
app = load_app(app_dir)
async def main():
    started = time.perf_counter()
    setup = getattr(app.app, "setup", None)
    if setup is not None:
        await _call(setup, app.setup_args({}, None))
    set_up = time.perf_counter()
    run = app.functions["run"]
    await _call(run.method, run.call_args(run.validate_input(data), None))
    print(json.dumps({"setup": set_up - started, "first run": time.perf_counter() - set_up}))
asyncio.run(main())
"""
"""The app's setup and first run inside one process that has already imported it
and its heavy modules (as the issue measured "building the model from its files"
after ``import sentence_transformers``): what a start costs beyond any start
mechanism."""


def in_process(case: AppCase) -> dict[str, float]:
    import subprocess

    env = {**os.environ, **app_env(case.app_dir)}
    argv = [sys.executable, "-c", IN_PROCESS, str(case.app_dir), json.dumps(case.input)]
    result = subprocess.run(
        [*argv, *case.modules],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def app_env(app_dir: Path) -> dict[str, str]:
    from supervisor.environments.app_config import read_manifest

    return {k: str(v) for k, v in read_manifest(app_dir).env.items()}


async def measure_fork_server(args: argparse.Namespace, heavy: AppCase | None) -> dict[str, Any]:
    import anyio
    from _common import make_supervisor

    out: dict[str, Any] = {"first_result": {}, "burst": {}, "idle": {}}
    if heavy is not None and args.heavy_runs > 0:
        preload = heavy.modules[len(RUNTIME_THIRD_PARTY) :]
        kinds = HEAVY_KINDS if "learn_preloads" in supervisor_kwargs() else START_KINDS
        samples: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        async with AsyncExitStack() as stack:
            sups = {
                kind: await stack.enter_async_context(
                    make_supervisor(**start_options(kind, preload))
                )
                for kind in kinds
            }
            pool, fork = sups["pool"], sups["fork"]
            log(f"fork server: {heavy.key}: warming up (the app's key, its fork server)")
            everyone = list(sups.values())
            for kind, sup in sups.items():
                await start_as(sup, kind, heavy, "warm", everyone)
            for i in range(args.heavy_runs):
                log(f"fork server: {heavy.key}: round {i + 1}/{args.heavy_runs}")
                for kind, sup in sups.items():
                    start = await start_as(sup, kind, heavy, f"bench-{i}", everyone)
                    samples[kind].append(start)
            await settle(fork)
            for name, server in fork.pool.status()["fork_servers"].items():
                cost = await anyio.to_thread.run_sync(idle_cost, server["pid"], False)
                out["idle"][f"fork server [{name}]"] = cost
            await settle(pool)
            for idle in _idle_processes(pool)[:1]:
                cost = await anyio.to_thread.run_sync(idle_cost, idle.pid)
                out["idle"]["idle pre-started child, heavy preloads, spawned (pool)"] = cost
            for idle in _idle_processes(fork)[:1]:
                cost = await anyio.to_thread.run_sync(idle_cost, idle.pid)
                out["idle"]["idle pre-started child, heavy preloads, forked (pool)"] = cost
        out["first_result"][heavy.key] = samples
        for i in range(args.heavy_runs):
            log(f"fork server: {heavy.key}: setup and first run in one process {i + 1}")
            out.setdefault("in_process", []).append(in_process(heavy))
    empty = APPS_DIR / "empty"
    times: dict[str, list[float]] = {kind: [] for kind in START_KINDS}
    async with (
        make_supervisor(**start_options("spawn")) as spawn,
        make_supervisor(**start_options("pool")) as pool,
        make_supervisor(**start_options("fork")) as fork,
    ):
        sups = {"spawn": spawn, "pool": pool, "fork": fork}
        for kind, sup in sups.items():  # warm-up
            await burst(sup, kind, empty, -1)
        for i in range(args.runs):
            log(f"fork server: {BURST} empty apps at once: round {i + 1}/{args.runs}")
            for kind, sup in sups.items():
                times[kind].append(await burst(sup, kind, empty, i))
        await settle(fork)
        for name, server in fork.pool.status()["fork_servers"].items():
            cost = await anyio.to_thread.run_sync(idle_cost, server["pid"], False)
            out["idle"][f"fork server [{name}]"] = cost
    out["burst"] = times
    return out


def _idle_processes(sup: Any) -> list[Any]:
    return [
        pooled.process for children in sup.pool._idle.values() for pooled in children
    ]  # benchmark only: which processes are the pool's idle children


def report_fork_server(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for app, samples in results["first_result"].items():
        medians = {k: median([s["first result"] for s in v]) for k, v in samples.items() if v}
        rows = [
            [
                kind,
                len(samples[kind]),
                ms(medians[kind]),
                ms(median([s["ready"] for s in samples[kind]])),
                fx(ratio(medians[kind], medians["spawn"])),
                fx(ratio(medians[kind], medians["pool"])),
            ]
            for kind in HEAVY_KINDS
            if kind in medians
        ]
        print_table(
            f"Fork server: {app} to its first result (heavy modules preloaded; "
            "learned: none configured, learned from the warm-up start)",
            ["start", "runs", "first result p50 ms", "ready p50 ms", "/ spawn", "/ pool"],
            rows,
        )
        out[f"{app}_first_result"] = {
            kind: summary([s["first result"] for s in v]) for kind, v in samples.items()
        }
        if results.get("in_process"):
            base = median([r["setup"] + r["first run"] for r in results["in_process"]])
            target = base + 0.1
            print(
                f"In one process that has imported the app: setup + first run p50 "
                f"{ms(base)} ms; the issue's target (that + 100 ms): {ms(target)} ms; "
                + ", ".join(f"{k} {fx(ratio(medians[k], target))}" for k in medians)
                + " of it\n"
            )
            out[f"{app}_in_process"] = summary(
                [r["setup"] + r["first run"] for r in results["in_process"]]
            )
    times = results["burst"]
    if any(times.values()):
        medians = {k: median(v) for k, v in times.items() if v}
        print_table(
            f"Fork server: {BURST} empty apps started at once, until all are ready",
            ["start", "runs", "all ready p50 ms", "p90 ms", "/ spawn", "/ pool"],
            [
                [
                    kind,
                    len(times[kind]),
                    ms(medians[kind]),
                    ms(p90(times[kind])),
                    fx(ratio(medians[kind], medians["spawn"])),
                    fx(ratio(medians[kind], medians["pool"])),
                ]
                for kind in START_KINDS
                if kind in medians
            ],
        )
        out["burst"] = {kind: summary(v) for kind, v in times.items()}
    if results["idle"]:
        print_table(
            f"Idle cost (CPU over {IDLE_WINDOW:g} s)",
            ["process", "RSS MiB", "USS MiB", "CPU %"],
            [
                [
                    name,
                    f"{c['rss'] / 2**20:.1f}",
                    f"{c['uss'] / 2**20:.1f}",
                    f"{100 * c['cpu']:.2f}",
                ]
                for name, c in results["idle"].items()
            ],
        )
        out["idle"] = results["idle"]
    return out


def pool_safe_env(app_dir: Path) -> bool:
    from supervisor.environments.app_config import read_manifest

    try:
        from supervisor.process.pool import pool_safe
    except ImportError:
        return True
    return bool(pool_safe(read_manifest(app_dir).env))


class _maybe:
    """``async with _maybe(flag, factory) as x``: x is the entered object, or None."""

    def __init__(self, enabled: bool, factory: Any) -> None:
        self._cm = factory() if enabled else None

    async def __aenter__(self) -> Any:
        return await self._cm.__aenter__() if self._cm is not None else None

    async def __aexit__(self, *exc: Any) -> Any:
        if self._cm is not None:
            return await self._cm.__aexit__(*exc)
        return None


# -- import profile -------------------------------------------------------------------------


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def child_main_imports() -> tuple[str, ...]:
    """The modules child/__main__.py imports (at module level and in ``main()``)."""
    import ast

    tree = ast.parse((ROOT / "child" / "__main__.py").read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name not in found and name not in ("__future__", "importlib"):
                found.append(name)
    return tuple(found)


async def child_import_lines(app_dir: Path, cached_bytecode: bool) -> tuple[float, list[str]]:
    """Start a child with ``PYTHONPROFILEIMPORTTIME=1``, load and set up the app, and
    collect the import-time lines it writes to stderr.

    The runtime's own imports (those of child/__main__.py) are done by a ``-c``
    wrapper just before ``main()`` runs, so that their lines go to the original
    stderr: once main() has taken fd 2 over, a line written before the child's hello
    breaks its capture thread (a ``log`` is not allowed before ``hello``) and is lost.
    The app's imports, during ``load``, come back as the load request's log messages.
    """
    import anyio
    from _raw import RawChild

    from supervisor.environments.app_config import read_manifest

    env = {**read_manifest(app_dir).env, "PYTHONPROFILEIMPORTTIME": "1"}
    drop: tuple[str, ...] = ()
    if cached_bytecode:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
        drop = ("PYTHONDONTWRITEBYTECODE",)
    handler = _Collect()
    loggers = [logging.getLogger("bench.raw"), logging.getLogger("supervisor.process")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
    try:
        async with anyio.create_task_group() as tasks:
            started = time.monotonic()
            child = await RawChild.spawn(
                tasks,
                cwd=app_dir,
                env_extra=env,
                drop_env=drop,
                probe=False,
                preimport=child_main_imports(),
            )
            await child.load(app_dir)
            await child.setup({})
            wall = time.monotonic() - started
            await child.close()
            tasks.cancel_scope.cancel()
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
    return wall, [*handler.lines, *child.logs]


def import_profile(
    app_dir: Path, *, cached_bytecode: bool = False, repeat: int = 3
) -> dict[str, Any]:
    """Self import time of a real child start (to setup done) grouped by top-level
    package, and the slowest modules: the run with the least total of ``repeat``."""
    import anyio

    best: tuple[float, float, list[tuple[float, float, str]]] | None = None
    for _ in range(repeat):
        wall, lines = anyio.run(child_import_lines, app_dir, cached_bytecode)
        entries = []
        for line in lines:
            m = IMPORT_LINE.search(line)
            if m:
                entries.append((int(m.group(1)) / 1e6, int(m.group(2)) / 1e6, m.group(4)))
        total = sum(e[0] for e in entries)
        if entries and (best is None or total < best[0]):
            best = (total, wall, entries)
    if best is None:
        return {"error": "no import-time lines were captured"}
    total, wall, entries = best
    by_package: dict[str, float] = {}
    for self_s, _, name in entries:
        top = name.split(".")[0]
        if top.startswith("_app_"):
            group = "(the app's own package)"
        elif top in sys.stdlib_module_names:
            group = "(stdlib)"
        else:
            group = top
        by_package[group] = by_package.get(group, 0.0) + self_s
    entries.sort(reverse=True)
    return {
        "wall": wall,
        "modules": len(entries),
        "total_self": total,
        "by_package": dict(sorted(by_package.items(), key=lambda kv: -kv[1])),
        "top_modules": [{"module": n, "self": s, "cumulative": c} for s, c, n in entries[:12]],
    }


# -- reporting ----------------------------------------------------------------------------------


def report(cases: list[AppCase], extra: dict[str, Any], profiles: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"apps": {}}
    interp = extra["interpreter_only"]
    for case in cases:
        if not case.samples:
            continue
        rows = []
        app_json: dict[str, Any] = {"app_dir": str(case.app_dir.relative_to(ROOT)), "variants": {}}
        medians: dict[str, float] = {}
        for variant, samples in case.samples.items():
            ready = [s["ready"] for s in samples]
            first = [s["first result"] for s in samples]
            medians[variant] = median(ready)
            app_json["variants"][variant] = {
                key: summary([s[key] for s in samples if key in s])
                for key in sorted({k for s in samples for k in s})
            }
            rows.append(
                [
                    variant,
                    len(samples),
                    ms(median(ready)),
                    ms(p90(ready)),
                    ms(median(first)),
                    ms(p90(first)),
                ]
            )
        for row, variant in zip(rows, case.samples, strict=True):
            for base in (MP_BASELINE, MP_MODEL_BASELINE):
                row.append(fx(ratio(medians[variant], medians[base])) if base in medians else "-")
        app_json["ratios_to_mp_worker"] = {
            v: ratio(m, medians.get(MP_BASELINE, float("nan"))) for v, m in medians.items()
        }
        print_table(
            f"Cold start: {case.key} ({app_json['app_dir']})",
            [
                "variant",
                "runs",
                "ready p50 ms",
                "ready p90 ms",
                "first result p50 ms",
                "first result p90 ms",
                "ready / mp worker",
                "ready / mp worker + model",
            ],
            rows,
        )
        probe_samples = case.samples.get("probe (replica.py sequence, no pool)", [])
        cached = case.samples.get("probe, cached bytecode", [])
        if probe_samples:
            brow = []
            for name, _, _ in PROBE_PHASES:
                vals = [s[name] for s in probe_samples if name in s]
                cvals = [s[name] for s in cached if name in s]
                brow.append(
                    [name, ms(median(vals)), ms(p90(vals)), ms(median(cvals)) if cvals else "-"]
                )
            print_table(
                f"Where the start time goes: {case.key} (probe, median of {len(probe_samples)})",
                ["phase", "p50 ms", "p90 ms", "p50 ms, cached bytecode"],
                brow,
            )
        for note in case.notes:
            print(f"Note ({case.key}): {note}\n")
        app_json["notes"] = case.notes
        out["apps"][case.key] = app_json
    if interp:
        print(
            f"Bare `python -c pass`: p50 {ms(median(interp))} ms, p90 {ms(p90(interp))} ms "
            f"({len(interp)} runs)\n"
        )
        out["python_c_pass"] = summary(interp)
    for title, prof in profiles.items():
        if "error" in prof:
            print(f"Import profile {title}: {prof['error']}\n")
            continue
        rows = [[pkg, ms(t)] for pkg, t in list(prof["by_package"].items())[:10]]
        rows.append(["total", ms(prof["total_self"])])
        print_table(
            f"Import time in a real child start: {title} "
            f"(PYTHONPROFILEIMPORTTIME, {prof['modules']} modules, least of 3 runs; "
            f"the profiler itself slows imports)",
            ["package", "self ms"],
            rows,
        )
        rows = [[m["module"], ms(m["self"]), ms(m["cumulative"])] for m in prof["top_modules"][:10]]
        print_table(f"Slowest modules: {title}", ["module", "self ms", "cumulative ms"], rows)
    out["import_profiles"] = profiles
    out["has_pool"] = extra["has_pool"]
    out["has_preload"] = extra["has_preload"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds for the light apps")
    parser.add_argument(
        "--heavy-runs",
        type=int,
        default=3,
        help="rounds for the torch embedding app (each costs seconds)",
    )
    parser.add_argument("--quick", action="store_true", help="3 light rounds, 1 heavy round")
    parser.add_argument("--no-heavy", action="store_true", help="skip the torch app")
    parser.add_argument(
        "--no-bytecode-row", action="store_true", help="skip the cached-bytecode probe"
    )
    parser.add_argument(
        "--fork-server-only", action="store_true", help="only the fork server section"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.heavy_runs = min(args.runs, 3), min(args.heavy_runs, 1)

    import anyio

    info = machine_info()
    print(f"# Cold start\n\n{machine_line(info)}\n")
    cases = [
        AppCase("empty", APPS_DIR / "empty", {"x": 1}, RUNTIME_THIRD_PARTY),
        AppCase("numpy", APPS_DIR / "numpy_app", {"n": 4}, (*RUNTIME_THIRD_PARTY, "numpy")),
    ]
    heavy = None if args.no_heavy else embedding_case()
    if heavy is not None:
        cases.append(heavy)
    started = time.monotonic()
    from _common import supervisor_kwargs

    fork_results = None
    if "fork_server" in supervisor_kwargs():
        fork_results = anyio.run(measure_fork_server, args, heavy)
    if args.fork_server_only:
        results = {"fork_server": report_fork_server(fork_results) if fork_results else None}
        results["machine"] = info
        results["elapsed"] = time.monotonic() - started
        print(f"Total benchmark time: {results['elapsed']:.1f} s")
        write_json("cold_start_fork_server", results)
        return
    extra = anyio.run(measure, args, cases)
    log("import profiles")
    profiles = {"empty app": import_profile(APPS_DIR / "empty")}
    if not args.no_bytecode_row:
        profiles["empty app, cached bytecode"] = import_profile(
            APPS_DIR / "empty", cached_bytecode=True
        )
    profiles["numpy app"] = import_profile(APPS_DIR / "numpy_app")
    results = report(cases, extra, profiles)
    if fork_results is not None:
        results["fork_server"] = report_fork_server(fork_results)
    results["machine"] = info
    results["settings"] = {
        "runs": args.runs,
        "heavy_runs": args.heavy_runs,
        "quick": args.quick,
        "pid": os.getpid(),
    }
    results["elapsed"] = time.monotonic() - started
    print(f"Total benchmark time: {results['elapsed']:.1f} s")
    write_json("cold_start", results)


if __name__ == "__main__":
    main()
