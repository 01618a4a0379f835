"""``serve APP_DIR --ray`` without an address: a local Ray cluster for the command's lifetime."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")

import httpx

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_local_cluster_serves_then_goes_away_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "cli.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor",
                "serve",
                str(REPO / "examples/hello"),
                "--ray",
                "--port",
                str(port),
                "--ray-num-cpus",
                "0.1",
                "--setup",
                '{"greeting": "Hi"}',
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                response = client.post("/run", json={"input": {"name": "Ada"}})
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert response.json()["output"]["greeting"] == "Hi, Ada!"
        health = client.get("/cluster/health").json()
        assert health["status"] == "ok"
        assert list(health["replicas"]) == [health["answered_by"]]
        started = psutil.Process(process.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in started)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, log.read_text()[-3000:]
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
