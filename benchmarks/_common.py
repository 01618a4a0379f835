"""Helpers shared by the benchmark scripts: statistics, tables, JSON, ports, baselines.

Only the standard library is imported at module level: the multiprocessing
baselines use the ``spawn`` start method, whose workers import this module (and
re-run the main script's top level), so anything heavy here would inflate them.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
APPS_DIR = BENCH_DIR / "apps"

# What the child runtime imports from outside the standard library (see ``python
# -X importtime -m child``): the bare-interpreter baselines import the same.
RUNTIME_THIRD_PARTY = ("pydantic", "msgpack", "anyio", "yaml")


# -- statistics ----------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = q * (len(data) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return quantile(values, 0.5)


def p90(values: Sequence[float]) -> float:
    return quantile(values, 0.9)


def p99(values: Sequence[float]) -> float:
    return quantile(values, 0.99)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """n, min, median, p90, p99, max and mean of ``values`` (seconds stay seconds)."""
    vals = list(values)
    return {
        "n": len(vals),
        "min": min(vals) if vals else math.nan,
        "median": median(vals),
        "p90": p90(vals),
        "p99": p99(vals),
        "max": max(vals) if vals else math.nan,
        "mean": sum(vals) / len(vals) if vals else math.nan,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


# -- formatting ------------------------------------------------------------------


def ms(seconds: float | None, digits: int = 1) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    return f"{seconds * 1000:.{digits}f}"


def us(seconds: float | None, digits: int = 0) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    return f"{seconds * 1e6:.{digits}f}"


def fx(value: float | None, digits: int = 1) -> str:
    """A ratio as ``12.3x``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}x"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    text = f"\n### {title}\n\n{markdown_table(headers, rows)}\n"
    print(text, flush=True)
    return text


def log(message: str) -> None:
    """Progress on stderr, so that stdout stays a clean Markdown report."""
    print(message, file=sys.stderr, flush=True)


# -- the machine and the results ---------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str | None:
    """The checkout's short revision, with ``+dirty`` when tracked files changed."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5, check=False
        )
        return done.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD") or None
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if rev and dirty:
        rev += "+dirty"
    return rev


def machine_info() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_start": load,
        "git": git_revision(),
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
    }


def machine_line(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
    return (
        f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"{info['date']}, git {info['git']}, load average at start {load}"
    )


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    text = json.dumps(_clean(data), indent=2, default=_json_default, allow_nan=False)
    path.write_text(text + "\n")
    log(f"wrote {path.relative_to(ROOT)}")
    return path


def _clean(value: Any) -> Any:
    """NaN and infinities become null, so that the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the supervisor as it is today -------------------------------------------------


def supervisor_kwargs() -> set[str]:
    """The keyword arguments ``Supervisor()`` takes in this checkout."""
    from supervisor import Supervisor

    return set(inspect.signature(Supervisor.__init__).parameters) - {"self"}


def make_supervisor(**kwargs: Any) -> Any:
    """A ``Supervisor`` with the arguments it supports; unsupported ones are dropped.

    A ``pool_size`` that is not supported is dropped only when it is 0 (which is what
    a pool-less supervisor does anyway); otherwise it is an error.
    """
    from supervisor import Supervisor

    accepted = supervisor_kwargs()
    for key in list(kwargs):
        if key not in accepted:
            harmless = (key == "pool_size" and kwargs[key] == 0) or (
                key == "pool_preload" and not kwargs[key]
            )
            if harmless:
                del kwargs[key]
            else:
                raise TypeError(f"Supervisor() does not take {key!r} in this checkout")
    return Supervisor(**kwargs)


def pool_idle_count(sup: Any) -> int | None:
    """Idle pre-started children in the supervisor's pool, or None if it has no pool."""
    pool = sup.status().get("pool")
    if not isinstance(pool, dict):
        return None
    idle = pool.get("idle")
    if isinstance(idle, dict):
        return sum(int(v) for v in idle.values())
    if isinstance(idle, int):
        return idle
    return None


async def wait_pool_ready(sup: Any, want: int = 1, timeout: float = 30.0) -> float:
    """Wait until the pool holds ``want`` idle children; returns seconds waited.

    Falls back to a fixed one-second sleep when the pool's status is unreadable.
    """
    import anyio

    started = time.monotonic()
    if pool_idle_count(sup) is None:
        await anyio.sleep(1.0)
        return time.monotonic() - started
    while time.monotonic() - started < timeout:
        count = pool_idle_count(sup)
        if count is not None and count >= want:
            # Let the pool's own bookkeeping (a refill that was just asked for) settle.
            await anyio.sleep(0.05)
            return time.monotonic() - started
        await anyio.sleep(0.01)
    raise TimeoutError(f"the pool did not fill within {timeout:g} s")


# -- multiprocessing baselines (run in spawn-context workers) -------------------------


PYDANTIC_MODEL_CODE = "class _M(pydantic.BaseModel):\n    x: int = 0\n"
"""Defining one model loads pydantic's schema machinery (about 100 more modules than
``import pydantic``, which is lazy): every app, and the child runtime, pay for it."""


def mp_import_and_answer(
    conn: Any, modules: Sequence[str], define_model: bool = False, in_asyncio: bool = False
) -> None:
    """Import ``modules``, then answer one message: the multiprocessing cold-start peer.
    ``in_asyncio`` answers from inside ``asyncio.run``, as a peer serving an async app
    would have to."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    if define_model:
        exec("import pydantic\n" + PYDANTIC_MODEL_CODE, {})
    if in_asyncio:
        import asyncio

        async def answer() -> None:
            conn.send(conn.recv())

        asyncio.run(answer())
    else:
        conn.send(conn.recv())
    conn.close()


def mp_echo_loop(conn: Any, modules: Sequence[str] = ()) -> None:
    """Echo every message until ``None``: the multiprocessing call/payload peer."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    while True:
        message = conn.recv()
        if message is None:
            break
        conn.send(message)
    conn.close()


class SpawnEchoWorker:
    """A ``spawn``-context process echoing Python objects over a ``multiprocessing.Pipe``."""

    def __init__(self, modules: Sequence[str] = ()) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=mp_echo_loop, args=(child_conn, tuple(modules)))
        self.process.start()
        child_conn.close()

    def call(self, message: Any) -> Any:
        self.conn.send(message)
        return self.conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()

    def __enter__(self) -> SpawnEchoWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def time_mp_cold_start(
    modules: Sequence[str], define_model: bool = False, in_asyncio: bool = False
) -> float:
    """Seconds from starting a spawn-context worker to its first answer over a Pipe."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    process = ctx.Process(
        target=mp_import_and_answer,
        args=(child_conn, tuple(modules), define_model, in_asyncio),
    )
    started = time.monotonic()
    process.start()
    parent_conn.send("ping")
    parent_conn.recv()
    elapsed = time.monotonic() - started
    process.join(10)
    child_conn.close()
    parent_conn.close()
    return elapsed


def time_bare_interpreter(
    modules: Sequence[str], define_model: bool = False, python: str = sys.executable
) -> float:
    """Seconds to run ``python -c "import <modules>"`` to completion."""
    code = f"import {', '.join(modules)}" if modules else "pass"
    if define_model:
        code += "\nimport pydantic\n" + PYDANTIC_MODEL_CODE
    started = time.monotonic()
    subprocess.run([python, "-c", code], check=True, cwd=ROOT)
    return time.monotonic() - started


def timed(function: Callable[[], Any]) -> float:
    started = time.monotonic()
    function()
    return time.monotonic() - started
