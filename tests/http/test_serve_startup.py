"""``serve`` binds first, answers health checks while its apps start, then serves them."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from http_helpers import APPS, Server, cli

SLOW = str(APPS / "sup_slow_setup")


def wait_live(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.logs()
        try:
            if httpx.get(f"{server.url}/health/live", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"not live within {timeout} s:\n{server.logs()}")


def test_health_answers_while_the_app_sets_up(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    setup = json.dumps({"seconds": 120, "gate": str(gate)})
    server = Server([SLOW, "--setup", setup, "--start-wait", "0"], log=tmp_path / "server.log")
    try:
        wait_live(server)
        ready = server.client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "starting"
        state = ready.json()["apps"]["sup_slow_setup"]
        assert state["state"] in ("pending", "starting", "setting_up")
        assert state["available"] is False
        health = server.client.get("/health")
        assert health.status_code == 503
        assert health.json()["apps"]["sup_slow_setup"]["available"] is False
        refused = server.client.post("/run", json={"input": {"text": "early"}})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "starting"
        assert int(refused.headers["retry-after"]) > 0
        gate.touch()
        server.wait_ready()
        assert server.client.get("/health/ready").json() == {
            "status": "ready",
            "apps": {"sup_slow_setup": {"state": "ready", "available": True}},
        }
        assert server.client.get("/health/live").status_code == 200
        done = server.client.post("/run", json={"input": {"text": "late"}})
        assert done.json()["output"] == {"text": "late"}
    finally:
        assert server.stop() == 0


def test_a_request_during_start_waits_for_the_app(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    setup = json.dumps({"seconds": 120, "gate": str(gate)})
    server = Server([SLOW, "--setup", setup], log=tmp_path / "server.log")
    try:
        wait_live(server)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(server.client.post, "/run", json={"input": {"text": "wait"}})
            assert server.client.get("/health/ready").status_code == 503
            gate.touch()
            response = pending.result(timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["output"] == {"text": "wait"}
    finally:
        assert server.stop() == 0


def test_a_port_in_use_exits_2_before_any_app_is_imported(tmp_path: Path) -> None:
    app = tmp_path / "marks_import"
    shutil.copytree(APPS / "marks_import", app)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", str(app), "--port", str(port), timeout=30)
    assert result.returncode == 2, result.stderr
    assert "cannot bind" in result.stderr
    assert "Address already in use" in result.stderr
    assert not (app / "imported").exists()
    # The same app does get imported when the port is free (the marker works).
    server = Server([str(app)], log=tmp_path / "server.log")
    try:
        server.wait_ready()
        assert (app / "imported").exists()
    finally:
        server.stop()


def test_a_failed_setup_logs_the_apps_traceback_and_exits_4() -> None:
    result = cli("serve", str(APPS / "sup_setup_fail"), "--port", "0", timeout=30)
    assert result.returncode == 4, result.stderr
    assert "cannot start sup_setup_fail" in result.stderr
    assert 'sup_setup_fail/inference.py", line' in result.stderr
    assert "in explode" in result.stderr
    assert "child/runtime.py" not in result.stderr
    assert "StartupFailed" not in result.stderr
    debug = cli("serve", str(APPS / "sup_setup_fail"), "--port", "0", "--debug", timeout=30)
    assert debug.returncode == 4
    assert "child/runtime.py" in debug.stderr


def test_sigterm_while_an_app_sets_up_stops_it_and_exits_0(tmp_path: Path) -> None:
    server = Server([SLOW, "--setup", '{"seconds": 60}'], log=tmp_path / "server.log")
    try:
        wait_live(server)
        deadline = time.monotonic() + 20
        while server.client.get("/health/ready").json()["apps"]["sup_slow_setup"]["state"] != (
            "setting_up"
        ):
            assert time.monotonic() < deadline, server.logs()
            time.sleep(0.05)
        children = psutil.Process(server.process.pid).children(recursive=True)
        assert children
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0, server.logs()
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
    finally:
        server.stop()
