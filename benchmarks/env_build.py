"""Building an app's environment: uv against pip, cold cache, warm cache, cached env.

For each installer, the same pinned requirements (the newest pins of the
environment tests: pydantic 2.13.4, inferencesh 0.7.23 and their dependencies,
15 packages with the runtime's own) are built through ``EnvCache``, as
``Supervisor.start`` does:

- cold: an empty package cache (``UV_CACHE_DIR``/``PIP_CACHE_DIR`` in a fresh
  temporary directory) and no environment: every wheel is downloaded;
- warm: the package cache of the cold run, a fresh environment directory;
- cached: the environment exists; ``ensure`` only finds it (what every start
  of an app with requirements pays after the first);
- and, for reference, ``sup.start()`` to ready of ``apps/empty`` (no SDK) in an
  environment pinning the supervisor's own versions of the runtime's
  dependencies, against the same app on the supervisor's own interpreter.

Both installers read the public index here: this machine's pip configuration
(local mirrors, find-links) is switched off for the run, so that they fetch the
same files from the same place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "supervisor"))

from _common import log, machine_info, machine_line, median, print_table, write_json
from env_apps import NEW_LOCK, make_app

from supervisor import Supervisor
from supervisor.environments.env_cache import EnvCache, Installer
from supervisor.environments.env_spec import env_spec
from supervisor.environments.interpreters import host_interpreter

EMPTY = Path(__file__).resolve().parent / "apps" / "empty"
HOST_PINS = """\
annotated-types==0.8.0
anyio==4.16.0
idna==3.20
msgpack==1.2.4
pydantic==2.14.4
pydantic-core==2.50.5
PyYAML==6.0.4
typing-extensions==4.16.0
typing-inspection==0.4.5
"""
"""This checkout's versions of the runtime's dependencies: the same code on both sides."""

ISOLATE = {"PIP_CONFIG_FILE": os.devnull}
UNSET = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_FIND_LINKS")


async def build_once(installer: Installer, root: Path, app: Path) -> float:
    spec = env_spec(app, host_interpreter())
    assert spec is not None
    cache = EnvCache(root, installer=installer)
    started = time.perf_counter()
    await cache.ensure(spec)
    return time.perf_counter() - started


async def start_seconds(app: Path, root: Path, app_envs: bool) -> float:
    async with Supervisor(gpu_backend=None, pool_size=0, env_cache=root, app_envs=app_envs) as sup:
        started = time.perf_counter()
        await sup.start(app)
        return time.perf_counter() - started


async def main(runs: int, installers: list[Installer]) -> dict[str, Any]:
    for name in UNSET:
        os.environ.pop(name, None)
    os.environ.update(ISOLATE)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="env-bench-") as tmp:
        base = Path(tmp)
        app = make_app(base / "apps", "probe", lock=NEW_LOCK)
        for installer in installers:
            figures: dict[str, list[float]] = {"cold": [], "warm": [], "cached": []}
            for run in range(runs):
                packages = base / f"{installer}-packages-{run}"
                os.environ["UV_CACHE_DIR"] = os.environ["PIP_CACHE_DIR"] = str(packages)
                log(f"{installer}: cold build {run + 1}/{runs}")
                figures["cold"].append(
                    await build_once(installer, base / f"{installer}-c{run}", app)
                )
                log(f"{installer}: warm build {run + 1}/{runs}")
                root = base / f"{installer}-w{run}"
                figures["warm"].append(await build_once(installer, root, app))
                for _ in range(5):
                    figures["cached"].append(await build_once(installer, root, app))
            results[installer] = figures
        empty = base / "apps" / "empty"
        shutil.copytree(EMPTY, empty)
        (empty / "requirements.lock").write_text(HOST_PINS)
        root = base / "start"
        await start_seconds(empty, root, True)  # builds it, and compiles its bytecode
        results["start_in_env"], results["start_on_host"] = [], []
        for _ in range(8):  # interleaved: the machine's load drifts
            results["start_in_env"].append(await start_seconds(empty, root, True))
            results["start_on_host"].append(await start_seconds(empty, root, False))
    return results


def report(results: dict[str, Any], installers: list[Installer]) -> None:
    rows = []
    for installer in installers:
        figures = results[installer]
        rows.append(
            [
                installer,
                f"{median(figures['cold']):.2f} s",
                f"{median(figures['warm']):.2f} s",
                f"{median(figures['cached']) * 1000:.1f} ms",
            ]
        )
    print_table(
        "Environment build, 15 pinned packages (median)",
        ["installer", "cold cache", "warm cache", "cached env"],
        rows,
    )
    print_table(
        "sup.start() to ready, apps/empty, no pool (median of 8, interleaved)",
        ["where", "start"],
        [
            ["cached app environment", f"{median(results['start_in_env']) * 1000:.0f} ms"],
            ["supervisor's interpreter", f"{median(results['start_on_host']) * 1000:.0f} ms"],
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="cold and warm builds per installer")
    parser.add_argument("--installers", default="uv,pip")
    args = parser.parse_args()
    chosen: list[Installer] = [i for i in args.installers.split(",") if i in ("uv", "pip")]  # type: ignore[misc]
    info = machine_info()
    log(machine_line(info))
    figures = anyio.run(main, args.runs, chosen)
    report(figures, chosen)
    write_json("env_build", {"machine": info, "results": figures})
