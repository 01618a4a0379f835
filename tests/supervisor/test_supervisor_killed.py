"""A supervisor that is SIGKILLed leaves no process behind.

A small script starts a supervisor and an app in a subprocess, prints the
pids of every process it caused to exist, and sleeps; the test SIGKILLs the
script (no cleanup code of the supervisor can run) and checks that every one
of those processes is gone within a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import anyio, psutil
    from supervisor import Supervisor

    async def main() -> None:
        async with Supervisor(gpu_backend=None) as sup:
            app = await sup.start(sys.argv[1], replicas=2, max_concurrency=2)
            spawned = await app.run({"how": "spawn_grandchild"})
            request = app.submit({"how": "sleep", "seconds": 600})
            while not any(r["in_flight"] for r in app.status()["replicas"]):
                await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            descendants = [p.pid for p in psutil.Process().children(recursive=True)]
            print(json.dumps({
                "children": app.status()["pids"],
                "grandchild": spawned["grandchild"],
                "descendants": descendants,
            }), flush=True)
            await anyio.sleep(600)

    anyio.run(main)
    """
)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until none of ``pids`` runs (zombies count as gone); return the rest."""
    deadline = time.monotonic() + timeout
    while True:
        survivors = [pid for pid in pids if alive(pid)]
        if not survivors or time.monotonic() > deadline:
            return survivors
        time.sleep(0.05)


def kill_quietly(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def killed_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the script, SIGKILL it, and report which of its processes survived."""
    workdir = tmp_path_factory.mktemp("killed")
    script = workdir / "supervise.py"
    script.write_text(SCRIPT)
    stderr = (workdir / "stderr.txt").open("w")
    app_dir = Path(__file__).resolve().parents[1] / "apps" / "sup_crashy"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(app_dir)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    pids: list[int] = []
    try:
        line = _read_line(proc, timeout=30, stderr=workdir / "stderr.txt")
        info = json.loads(line)
        pids = sorted({*info["children"], info["grandchild"], *info["descendants"]})
        assert len(info["children"]) == 2
        for pid in pids:
            assert alive(pid), f"pid {pid} was not running before the kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        survivors = wait_gone(pids, timeout=5.0)
        yield {**info, "survivors": survivors}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        stderr.close()
        kill_quietly(pids)


def _read_line(proc: subprocess.Popen[str], timeout: float, stderr: Path) -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(
                f"the supervisor script printed nothing in {timeout} s:\n{stderr.read_text()}"
            )
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(
            f"the supervisor script exited early (status {proc.wait()}):\n{stderr.read_text()}"
        )
    return line


def test_children_die_with_a_sigkilled_supervisor(killed_supervisor: dict[str, Any]) -> None:
    survivors = set(killed_supervisor["survivors"])
    children = set(killed_supervisor["children"])
    assert not children & survivors, f"app children survived: {sorted(children & survivors)}"
    others = set(killed_supervisor["descendants"]) - {killed_supervisor["grandchild"]}
    assert not others & survivors, f"other children survived: {sorted(others & survivors)}"


def test_grandchildren_die_with_a_sigkilled_supervisor(
    killed_supervisor: dict[str, Any],
) -> None:
    grandchild = killed_supervisor["grandchild"]
    assert grandchild not in killed_supervisor["survivors"], (
        f"grandchild pid {grandchild} survived the supervisor's SIGKILL"
    )
