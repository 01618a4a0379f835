"""Secrets through /proc, and children as an unprivileged user.

The supervisor makes itself non-dumpable, so a child of the same (non-root)
user cannot read its environment; root can read any process's, so a root
supervisor runs its children as another user (``child_user``), without new
privileges, core dumps or many descriptors. These tests need root (to become
``nobody``), ``setpriv`` and the distribution's Python (the default one lives
under /root, which ``nobody`` cannot enter), given the runtime's packages on
PYTHONPATH from this environment (world-readable here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest

from supervisor import Supervisor
from supervisor import errors as E
from supervisor.environments.env_cache import ENV_CACHE_VAR

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "tests" / "apps" / "security"
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]
PYTHONPATH = os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]])
SECRET = "hunter2-not-for-apps"


def _supervisor_env() -> dict[str, str]:
    """The little a supervising process here is given, with the suite's environment
    cache (``tests/conftest.py``): the user's own is not written by tests."""
    env = {"PYTHONPATH": PYTHONPATH, "PATH": os.environ.get("PATH", ""), "SECRET": SECRET}
    if os.environ.get(ENV_CACHE_VAR):
        env[ENV_CACHE_VAR] = os.environ[ENV_CACHE_VAR]
    return env


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to run processes as nobody"
    if shutil.which("setpriv") is None or shutil.which("prlimit") is None:
        return "needs setpriv and prlimit (util-linux)"
    if not os.path.exists(SYSTEM_PYTHON):
        return f"needs {SYSTEM_PYTHON}, which every user can run"
    probe = subprocess.run(
        [
            "setpriv",
            *NOBODY,
            SYSTEM_PYTHON,
            "-c",
            "import child.__main__, pydantic, msgpack, anyio",
        ],
        env={"PYTHONPATH": PYTHONPATH, "PATH": os.environ.get("PATH", "")},
        cwd="/",
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"nobody cannot import the runtime with {SYSTEM_PYTHON}: {probe.stderr[-300:]}"
    return None


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

READ_PARENT = textwrap.dedent(
    """
    import importlib.util, os, subprocess, sys
    spec = importlib.util.spec_from_file_location("non_dumpable", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if sys.argv[2] == "protect":
        assert module.make_non_dumpable()
    reader = (
        "import os\\n"
        "try:\\n"
        "    data = open(f'/proc/{os.getppid()}/environ', 'rb').read()\\n"
        "    print('read' if b'SECRET=' in data else 'empty')\\n"
        "except OSError as exc:\\n"
        "    print(type(exc).__name__)\\n"
    )
    print(subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True).stdout)
    """
)


@pytest.mark.parametrize("mode", ["protect", "control"])
def test_a_same_user_child_cannot_read_a_non_dumpable_parents_environment(
    tmp_path: Path, mode: str
) -> None:
    done = subprocess.run(
        [
            "setpriv",
            *NOBODY,
            SYSTEM_PYTHON,
            "-c",
            READ_PARENT,
            str(REPO / "supervisor" / "process" / "non_dumpable.py"),
            mode,
        ],
        env={"SECRET": SECRET, "PATH": os.environ.get("PATH", "")},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("PermissionError" if mode == "protect" else "read")


SUPERVISE = textwrap.dedent(
    """
    import json, sys
    import anyio
    from supervisor import Supervisor

    async def main() -> None:
        async with Supervisor(gpu_backend=None, pool_size=0, child_user="nobody") as sup:
            app = await sup.start(sys.argv[1])
            environ = await app.run({"entry": "environ"}, function="proc")
            me = await app.run({}, function="whoami")
            print(json.dumps({"environ": environ, "me": me, "status": sup.status()["containment"]}))

    anyio.run(main)
    """
)


def _supervise(tmp_path: Path, script_text: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run a supervising script as root on the test app; its last line is its report."""
    script = tmp_path / "supervise.py"
    script.write_text(script_text)
    done = subprocess.run(
        [SYSTEM_PYTHON, str(script), str(APP)],
        env=_supervisor_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(done.stdout.strip().splitlines()[-1])


def test_children_run_as_the_child_user_and_cannot_read_the_supervisor(tmp_path: Path) -> None:
    done, report = _supervise(tmp_path, SUPERVISE)
    assert report["environ"]["outcome"] == "PermissionError"
    assert SECRET not in done.stdout
    me = report["me"]
    assert (me["uid"], me["gid"]) == (65534, 65534)
    assert me["groups"] in ([], [65534])
    assert me["core_limit"] == [0, 0]
    assert me["open_files_limit"] == [16384, 16384]
    assert me["no_new_privs"] == "1"
    assert int(me["cap_eff"], 16) == 0
    assert report["status"]["child_user"] == "nobody"
    assert report["status"]["supervisor_dumpable"] is False


def _nobody_can_run(python: str) -> bool:
    as_nobody = ["setpriv", *NOBODY, "--", "/usr/bin/env", python, "-c", "pass"]
    return subprocess.run(as_nobody, cwd="/", capture_output=True).returncode == 0


@pytest.mark.anyio
async def test_a_child_user_that_cannot_run_the_interpreter_is_a_clear_error() -> None:
    if _nobody_can_run(sys.executable):
        pytest.skip(f"nobody can run {sys.executable} here")
    with pytest.raises(E.LoadFailedError) as caught:
        async with Supervisor(gpu_backend=None, pool_size=0, child_user="nobody"):
            pass
    message = caught.value.message
    assert "'nobody' cannot execute the interpreter" in message
    assert sys.executable in message


def test_unknown_and_root_child_users_are_refused() -> None:
    from supervisor.process.confinement import ConfinementError

    with pytest.raises(ConfinementError, match="no user"):
        Supervisor(child_user="no-such-user-here")
    with pytest.raises(ConfinementError, match="root"):
        Supervisor(child_user="root")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_a_child_user_takes_uploads_and_keeps_its_secrets(tmp_path: Path) -> None:
    import time

    import httpx

    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    command = [SYSTEM_PYTHON, "-m", "supervisor", "serve", str(APP), "--child-user", "nobody"]
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        env=_supervisor_env(),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        upload = httpx.post(
            f"{url}/run/read",
            data={"request": json.dumps({"input": {}})},
            files={"file": ("note.txt", b"uploaded bytes", "text/plain")},
            timeout=30,
        )
        assert upload.status_code == 200, upload.text
        assert upload.json()["output"]["content"] == "uploaded bytes"
        shadow = httpx.post(f"{url}/run/make", json={"input": {"special": "/etc/shadow"}})
        assert shadow.status_code == 200, shadow.text
        output = shadow.json()["output"]
        refused = output["maybe"]["error"]
        assert refused == "output file not published: not owned by the user the app runs as"
        assert "uri" not in output["maybe"]
        assert httpx.get(output["main"]["uri"]).text == "main", "its own files are served"
        environ = httpx.post(f"{url}/run/proc", json={"input": {}}, timeout=30)
        assert environ.json()["output"]["outcome"] == "PermissionError"
        assert SECRET not in environ.text
        health = httpx.get(f"{url}/health", timeout=5).json()
        assert health["status"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert "children run as 'nobody'" in (tmp_path / "server.log").read_text()


SUPERVISE_FORKED = textwrap.dedent(
    """
    import json, sys
    import anyio
    from supervisor import Supervisor
    from supervisor.process.pool import PoolKey

    async def main() -> None:
        async with Supervisor(gpu_backend=None, pool_size=1, child_user="nobody") as sup:
            while not any(s["ready"] for s in sup.pool.status()["fork_servers"].values()):
                await anyio.sleep(0.02)
            while sup.pool.idle_count() < 1:
                await anyio.sleep(0.02)
            pooled = sup.pool.take(PoolKey(sup.pool.default_key.python))
            await pooled.process.terminate(1.0)
            pooled.process.close_pipes()
            app = await sup.start(sys.argv[1])
            me = await app.run({}, function="whoami")
            start = app.status()["replicas"][0]["start"]
            print(json.dumps({"me": me, "start": start}))

    anyio.run(main)
    """
)


def test_children_forked_by_the_fork_server_run_as_the_child_user(tmp_path: Path) -> None:
    """The fork server is started as the child user, with its limits: its forks
    inherit them."""
    _, report = _supervise(tmp_path, SUPERVISE_FORKED)
    assert report["start"] == "fork"
    me = report["me"]
    assert (me["uid"], me["gid"]) == (65534, 65534)
    assert me["core_limit"] == [0, 0]
    assert me["open_files_limit"] == [16384, 16384]
    assert me["no_new_privs"] == "1"
    assert int(me["cap_eff"], 16) == 0
