"""Cold start: from ``sup.start()`` to ready, to setup done and to the first result.

Run from the repository root::

    .venv/bin/python benchmarks/cold_start.py [--runs 10] [--heavy-runs 3] [--quick]

For each app (benchmarks/apps/empty, benchmarks/apps/numpy_app and a CPU torch
embedding app when torch is importable) it measures, interleaving the variants in
every round so that machine noise hits them alike:

* ``probe``: the start sequence of ``supervisor/slot.py`` reproduced step by step
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
message over a Pipe. A one-off ``python -X importtime`` profile of the runtime's
imports says where the import time goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
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
    time_bare_interpreter,
    time_mp_cold_start,
    write_json,
)

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

    from supervisor.app_config import read_manifest

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

    async def bare(modules: tuple[str, ...]) -> float:
        return await anyio.to_thread.run_sync(time_bare_interpreter, modules)

    async def mp(modules: tuple[str, ...]) -> float:
        return await anyio.to_thread.run_sync(time_mp_cold_start, modules)

    interpreter_only: list[float] = []
    async with make_supervisor(pool_size=0) as nopool:
        for case in cases:
            runs = args.heavy_runs if case.heavy else args.runs
            if runs <= 0:
                continue
            log(f"{case.key}: warming up")
            await probe(case)  # page cache, and the app's input for a heavy app
            bytecode = not case.heavy and not args.no_bytecode_row
            if bytecode:
                await probe(case, cached_bytecode=True)  # fills PYCACHE_PREFIX
            safe = pool_safe_env(case.app_dir)
            if has_pool and not safe:
                case.notes.append(
                    "No pool rows: the app's inf.yml env sets variables read at start-up "
                    "(supervisor.pool.pool_safe() is False), so sup.start() never uses a "
                    "pooled child for it."
                )
            async with _maybe(
                has_pool and safe and not case.heavy, lambda: make_supervisor(pool_size=1)
            ) as pool, _maybe(
                has_pool and safe and has_preload
                and len(case.modules) > len(RUNTIME_THIRD_PARTY),
                lambda c=case: make_supervisor(
                    pool_size=1, pool_preload=list(c.modules[len(RUNTIME_THIRD_PARTY):])
                ),
            ) as pool_pre:
                async def quiesce(pool: Any = pool, pool_pre: Any = pool_pre) -> None:
                    # A pool refills in the background after each take: let it finish
                    # so that its CPU use does not land in the next measurement.
                    for sup in (pool, pool_pre):
                        if sup is not None:
                            await wait_pool_ready(sup, timeout=120)

                for i in range(runs):
                    log(f"{case.key}: round {i + 1}/{runs}")
                    await quiesce()
                    case.add("probe (slot.py sequence, no pool)", await probe(case))
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
                        mods = ",".join(case.modules[len(RUNTIME_THIRD_PARTY):])
                        case.add(f"sup.start(), warm pool, preload={mods}", sample)
                        await quiesce()
                    t = await bare(case.modules)
                    case.add(f"baseline: python -c 'import {', '.join(case.modules)}'", {
                        "ready": t, "first result": t,
                    })
                    t = await mp(case.modules)
                    case.add("baseline: multiprocessing spawn worker + Pipe answer", {
                        "ready": t, "first result": t,
                    })
                    if not case.heavy:
                        interpreter_only.append(await bare(()))
    return {"has_pool": has_pool, "has_preload": has_preload, "interpreter_only": interpreter_only}


def pool_safe_env(app_dir: Path) -> bool:
    from supervisor.app_config import read_manifest

    try:
        from supervisor.pool import pool_safe
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


CHILD_IMPORTS = (
    "child.parent_death, child.stdio_guard, faulthandler, anyio, child.log_capture, "
    "child.outbox, child.runtime, protocol"
)


def import_profile(
    modules: str, *, cached_bytecode: bool = False, repeat: int = 3
) -> dict[str, Any]:
    """``python -X importtime -c 'import ...'`` (the fastest of ``repeat`` runs): self
    time grouped by top-level package, and the slowest modules."""
    from supervisor.environment import child_environment

    env = child_environment({}, cuda_visible_devices="")
    if cached_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    best: tuple[float, str] | None = None
    for _ in range(repeat):
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {modules}"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        )
        wall = time.monotonic() - started
        if best is None or wall < best[0]:
            best = (wall, proc.stderr)
    assert best is not None
    wall, stderr = best
    by_package: dict[str, float] = {}
    by_module: list[tuple[float, float, str]] = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_us, cum_us, name = int(m.group(1)), int(m.group(2)), m.group(4)
        top = name.split(".")[0]
        if top not in ("child", "protocol", "supervisor") and top not in sys.stdlib_module_names:
            group = top
        elif top in sys.stdlib_module_names:
            group = "(stdlib)"
        else:
            group = top
        by_package[group] = by_package.get(group, 0.0) + self_us / 1e6
        by_module.append((self_us / 1e6, cum_us / 1e6, name))
    by_module.sort(reverse=True)
    return {
        "wall": wall,
        "total_self": sum(by_package.values()),
        "by_package": dict(sorted(by_package.items(), key=lambda kv: -kv[1])),
        "top_modules": [{"module": n, "self": s, "cumulative": c} for s, c, n in by_module[:12]],
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
        base = None
        for variant, samples in case.samples.items():
            ready = [s["ready"] for s in samples]
            first = [s["first result"] for s in samples]
            if variant.startswith("baseline: multiprocessing"):
                base = median(ready)
            app_json["variants"][variant] = {
                key: summary([s[key] for s in samples if key in s])
                for key in sorted({k for s in samples for k in s})
            }
            rows.append([variant, len(samples), ms(median(ready)), ms(p90(ready)),
                         ms(median(first)), ms(p90(first))])
        for row in rows:
            row.append(fx(ratio(float(row[2]) / 1000, base)) if base else "-")
        print_table(
            f"Cold start: {case.key} ({app_json['app_dir']})",
            ["variant", "runs", "ready p50 ms", "ready p90 ms", "first result p50 ms",
             "first result p90 ms", "ready / mp worker"],
            rows,
        )
        probe_samples = case.samples.get("probe (slot.py sequence, no pool)", [])
        cached = case.samples.get("probe, cached bytecode", [])
        if probe_samples:
            brow = []
            for name, _, _ in PROBE_PHASES:
                vals = [s[name] for s in probe_samples if name in s]
                cvals = [s[name] for s in cached if name in s]
                brow.append([name, ms(median(vals)), ms(p90(vals)),
                             ms(median(cvals)) if cvals else "-"])
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
        print(f"Bare `python -c pass`: p50 {ms(median(interp))} ms, p90 {ms(p90(interp))} ms "
              f"({len(interp)} runs)\n")
        out["python_c_pass"] = summary(interp)
    for title, prof in profiles.items():
        rows = [[pkg, ms(t)] for pkg, t in list(prof["by_package"].items())[:8]]
        print_table(
            f"Import profile: {title} "
            f"(python -X importtime, best of 3, wall {ms(prof['wall'])} ms)",
            ["package", "self ms"],
            rows,
        )
        rows = [[m["module"], ms(m["self"]), ms(m["cumulative"])] for m in prof["top_modules"][:8]]
        print_table(f"Slowest modules: {title}", ["module", "self ms", "cumulative ms"], rows)
    out["import_profiles"] = profiles
    out["has_pool"] = extra["has_pool"]
    out["has_preload"] = extra["has_preload"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds for the light apps")
    parser.add_argument("--heavy-runs", type=int, default=3,
                        help="rounds for the torch embedding app (each costs seconds)")
    parser.add_argument("--quick", action="store_true", help="3 light rounds, 1 heavy round")
    parser.add_argument("--no-heavy", action="store_true", help="skip the torch app")
    parser.add_argument("--no-bytecode-row", action="store_true",
                        help="skip the cached-bytecode probe")
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
    extra = anyio.run(measure, args, cases)
    profiles = {
        "runtime imports, as in this environment": import_profile(CHILD_IMPORTS),
    }
    if not args.no_bytecode_row:
        profiles["runtime imports, cached bytecode"] = import_profile(
            CHILD_IMPORTS, cached_bytecode=True
        )
    profiles["python -c 'import numpy'"] = import_profile("numpy")
    results = report(cases, extra, profiles)
    results["machine"] = info
    results["settings"] = {"runs": args.runs, "heavy_runs": args.heavy_runs,
                           "quick": args.quick, "pid": os.getpid()}
    results["elapsed"] = time.monotonic() - started
    print(f"Total benchmark time: {results['elapsed']:.1f} s")
    write_json("cold_start", results)


if __name__ == "__main__":
    main()
