"""Starting and stopping ``serve``: graceful SIGTERM, refusals, startup failures."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from http_helpers import APPS, EXAMPLES, Server, cli


def test_sigterm_finishes_the_request_in_flight_then_exits_0(tmp_path: Path) -> None:
    server = Server([str(APPS / "http_faults")], log=tmp_path / "server.log")
    try:
        server.wait_ready()
        child_pids = server.client.get("/health").json()["apps"]["http_faults"]["pids"]
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                server.client.post, "/run/sleep", json={"input": {"seconds": 1.5}}
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                status = server.client.get("/health").json()["apps"]["http_faults"]
                if status["replicas"][0]["in_flight"]:
                    break
                time.sleep(0.02)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            # No new connections once shutting down.
            try:
                refused = httpx.get(f"{server.url}/health", timeout=1).status_code
            except httpx.HTTPError:
                refused = None
            assert refused is None
            response = pending.result(timeout=15)
        assert response.status_code == 200, response.text
        assert response.json()["output"]["slept"] == 1.5
        assert server.process.wait(timeout=15) == 0
        assert not any(psutil.pid_exists(pid) and _alive(pid) for pid in child_pids)
        assert "Application shutdown complete" in server.logs()
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigint_also_exits_0(tmp_path: Path) -> None:
    server = Server([str(EXAMPLES / "hello")], log=tmp_path / "server.log")
    try:
        server.wait_ready()
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=15) == 0
    finally:
        server.stop()


def test_non_loopback_bind_needs_a_token() -> None:
    result = cli("serve", str(EXAMPLES / "hello"), "--host", "0.0.0.0", timeout=20)
    assert result.returncode == 2
    assert "refusing" in result.stderr
    assert "--auth-token" in result.stderr


def test_auth_token_from_the_environment(tmp_path: Path) -> None:
    env = {"SUPERVISOR_AUTH_TOKEN": "env-token"}
    server = Server([str(EXAMPLES / "hello")], log=tmp_path / "server.log", env=env)
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        ok = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer env-token"})
        assert ok.status_code == 200
    finally:
        assert server.stop() == 0


def test_an_app_that_cannot_load_stops_the_server_with_exit_4() -> None:
    result = cli("serve", str(APPS / "broken_import"), "--port", "0", timeout=30)
    assert result.returncode == 4, result.stderr
    assert "cannot start" in result.stderr


def test_setup_that_does_not_validate_exits_3() -> None:
    result = cli("serve", str(APPS / "http_needs_setup"), "--port", "0", timeout=30)
    assert result.returncode == 3, result.stderr


def test_serve_usage_errors_exit_2() -> None:
    assert cli("serve", "no/such/dir").returncode == 2
    assert cli("serve", str(EXAMPLES / "hello"), "--setup", "{bad").returncode == 2
    assert cli("serve", str(EXAMPLES / "hello"), "--setup", "other={}").returncode == 2
    assert cli("serve", str(EXAMPLES / "hello"), "--gpus", "x").returncode == 2
