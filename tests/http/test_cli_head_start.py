"""``serve`` starts its first child before it imports the supervisor (``head_start``):
the first app gets that child, and a ``serve`` that ends early leaves none behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from http_helpers import APPS, REPO, free_port


def children_of(pid: int) -> list[psutil.Process]:
    """Processes started on behalf of the supervisor ``pid`` (they carry its pid)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("SUPERVISOR_PARENT_PID") == str(pid):
                found.append(process)
        except psutil.Error:
            continue
    return found


def gone_soon(pid: int, within: float = 10.0) -> bool:
    """Whether nothing started for ``pid`` runs any more within ``within`` seconds: a
    process killed as ``serve`` ends may still be on its way out (a SIGKILL lands
    when the process is next scheduled, later on a loaded machine)."""
    deadline = time.monotonic() + within
    while children_of(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def serve(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor", "serve", *args],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def first_start(port: int, process: subprocess.Popen[bytes]) -> str:
    """How ``serve``'s app got its first child (``/status``), once it is ready."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited"
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=2).json()
            replica = status["apps"]["plain"]["replicas"][0]
            if replica["state"] == "ready":
                return str(replica["start"])
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("serve did not become ready")


@pytest.mark.parametrize(("head", "start"), [("1", "pool"), ("0", "spawn")])
def test_serve_gives_its_first_app_the_head_start_child(
    head: str, start: str, tmp_path: Path
) -> None:
    """With the head start, the first app's child is the pooled one started before the
    supervisor's imports; without it, the first start spawns (the pool waits for it).
    Either way ``serve`` remembers the app's interpreter for the next head start."""
    port = free_port()
    envs = tmp_path / "envs"
    args = [str(APPS / "plain"), "--port", str(port), "--env-cache", str(envs)]
    process = serve(args, tmp_path, APPVISOR_HEAD_START=head)
    try:
        assert first_start(port, process) == start
    finally:
        process.terminate()
        assert process.wait(30) == 0
    assert gone_soon(process.pid)
    assert list(tmp_path.glob("supervisor-head-*")) == []
    records = json.loads((envs / "head-start.json").read_text())
    assert records[os.path.realpath(APPS / "plain")]["python"] == sys.executable


def test_serve_that_fails_early_leaves_no_head_start_child(tmp_path: Path) -> None:
    """A usage error (here an app directory that does not exist) ends ``serve`` before
    anything adopts the child: it is stopped and its directory removed."""
    process = serve([str(tmp_path / "missing")], tmp_path)
    assert process.wait(60) == 2
    assert gone_soon(process.pid)
    assert list(tmp_path.glob("supervisor-head-*")) == []


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
