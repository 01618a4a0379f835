"""``serve`` binds first, answers health checks while its apps start, then serves them."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from http_helpers import APPS, Server, cli

from supervisor import cli as cli_module
from supervisor.errors import LoadFailedError

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


def _never_built(serving: Any, startup: Any) -> Any:
    raise AssertionError("the server was built although serve was told to stop")


def test_sigterm_while_the_server_loads_stops_the_started_apps_and_exits_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The apps start before the HTTP server's modules load: a signal in between
    must still stop them, and no server is started."""

    def load() -> Callable[[Any, Any], Any]:
        os.kill(os.getpid(), signal.SIGTERM)
        return _never_built

    monkeypatch.setattr(cli_module, "_load_http_server", load)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert cli_module.main(["serve", SLOW, "--setup", '{"seconds": 60}', "--port", "0"]) == 0
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=10)
    assert not alive


def test_an_app_failing_while_the_server_loads_exits_with_its_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed = threading.Event()
    original = cli_module._Serving.failed

    def failing(self: Any, name: str, error: Any) -> None:
        original(self, name, error)
        failed.set()

    def load() -> Callable[[Any, Any], Any]:
        assert failed.wait(60), "the app did not fail"
        return _never_built

    monkeypatch.setattr(cli_module._Serving, "failed", failing)
    monkeypatch.setattr(cli_module, "_load_http_server", load)
    assert cli_module.main(["serve", str(APPS / "sup_setup_fail"), "--port", "0"]) == 4


def test_a_server_that_fails_to_start_exits_1_not_with_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Failing:
        started = False

        async def serve(self, sockets: Any = None) -> None:
            raise SystemExit(1)  # what uvicorn does when its configuration cannot load

    monkeypatch.setattr(cli_module, "_load_http_server", lambda: lambda serving, startup: Failing())
    code = cli_module.main(["serve", SLOW, "--setup", '{"seconds": 60}', "--port", "0"])
    assert code == cli_module.ExitCode.RUNTIME


def _with_the_collector_paused(argv: list[str], *, paused: bool = True) -> int:
    """``main`` as ``python -m supervisor`` calls it (the collector off), and the
    collector's state afterwards undone: this process is the test worker."""
    gc.disable()
    try:
        return cli_module.main(argv, collector_paused=paused)
    finally:
        gc.enable()
        gc.unfreeze()


def test_serve_turns_the_collector_back_on_once_the_http_server_is_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``python -m supervisor`` imports without the cyclic garbage collector (a tenth
    of the start went to it); ``serve`` turns it back on before its server serves."""
    seen: dict[str, bool] = {}

    class Recording:
        started = False

        async def serve(self, sockets: Any = None) -> None:
            seen["serving"] = gc.isenabled()
            raise SystemExit(1)

    def load() -> Callable[[Any, Any], Any]:
        seen["importing"] = gc.isenabled()
        return lambda serving, startup: Recording()

    monkeypatch.setattr(cli_module, "_load_http_server", load)
    _with_the_collector_paused(["serve", SLOW, "--setup", '{"seconds": 60}', "--port", "0"])
    assert seen == {"importing": False, "serving": True}


@pytest.mark.parametrize(
    ("argv", "collecting"),
    [
        (["schema", str(APPS / "sup_async")], True),
        (["serve", SLOW, "--ray"], True),  # no HTTP server of its own to import
        (["serve", SLOW], False),  # on once the HTTP server is imported
    ],
)
def test_other_commands_turn_the_collector_back_on_at_once(
    argv: list[str], collecting: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def command(args: Any) -> int:
        seen.append(gc.isenabled())
        return 0

    monkeypatch.setattr(cli_module, f"cmd_{argv[0]}", command)
    _with_the_collector_paused(argv)
    # Embedded, ``main`` leaves the caller's collector as it found it.
    _with_the_collector_paused(argv, paused=False)
    assert seen == [collecting, False]


_MAIN_PROBE = """
import gc, runpy, sys
import supervisor.cli as cli
seen = []
main = cli.main
cli.main = lambda *args, **kwargs: seen.append(gc.isenabled()) or main(*args, **kwargs)
cli.cmd_schema = lambda args: seen.append(gc.isenabled()) or 0
if sys.argv[1] == "import":
    import supervisor.__main__
    print(seen, gc.isenabled())
else:
    sys.argv = ["supervisor", "schema", sys.argv[2]]
    try:
        runpy.run_module("supervisor", run_name="__main__")
    except SystemExit as exc:
        print(seen, gc.isenabled(), exc.code)
"""


def test_python_m_supervisor_pauses_the_collector_and_main_turns_it_back_on() -> None:
    """``python -m supervisor``: off when ``main`` is called, on when the command runs;
    imported as a module, ``supervisor.__main__`` leaves the collector alone."""

    def probe(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _MAIN_PROBE, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    assert probe("run", str(APPS / "sup_async")) == "[False, True] True 0"
    assert probe("import") == "[] True"


def test_a_supervisor_that_cannot_start_is_reported_with_its_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Unstartable:
        def __init__(self, **options: Any) -> None:
            pass

        async def __aenter__(self) -> Any:
            raise LoadFailedError("cannot contain the children here")

        async def __aexit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(cli_module, "Supervisor", Unstartable)
    code = cli_module.main(["serve", SLOW, "--port", "0"])
    assert code == cli_module.exit_code_for(LoadFailedError("x"))
    assert "cannot contain the children here" in capsys.readouterr().err


def test_the_command_line_loads_no_module_that_only_some_commands_need() -> None:
    """Package metadata (for ``--version``) and YAML (for an ``inf.yml``) cost a
    ``serve`` start 10-30 ms each; they are imported when used."""
    code = (
        "import sys\n"
        "from supervisor.cli import build_parser\n"
        "build_parser().parse_args(['serve', '.'])\n"
        "print(' '.join(m for m in ('importlib.metadata', 'yaml') if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []
    version = cli("--version")
    assert version.returncode == 0 and "(protocol 1)" in version.stdout
