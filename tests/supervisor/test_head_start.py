"""``serve``'s head start: its first child is spawned before the supervisor is imported,
and the pool adopts it (``supervisor.process.head_start``, ``ChildPool.adopt``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sup_helpers import WaitGone

from supervisor import Supervisor
from supervisor.process import head_start

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "tests" / "apps"

pytestmark = pytest.mark.usefixtures("no_leftover_processes")


@pytest.mark.parametrize(
    ("argv", "env", "wanted"),
    [
        (["serve", "app"], {}, True),
        (["serve", "app", "--port", "9000"], {}, True),
        (["serve", "--help"], {}, False),
        (["serve", "app", "--ray=auto"], {}, False),
        (["serve", "app", "--child-user", "nobody"], {}, False),
        (["run", "app"], {}, False),
        ([], {}, False),
        (["serve", "app"], {"APPVISOR_HEAD_START": "0"}, False),
    ],
)
def test_only_serve_starts_a_child_first(
    argv: list[str], env: dict[str, str], wanted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(head_start.DISABLE_VAR, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert head_start.wanted(argv) is wanted


@pytest.mark.anyio
async def test_the_first_start_takes_the_adopted_child(tmp_path: Path) -> None:
    """The child spawned before the pool is the one the first start gets, although it
    has not said hello yet when the start asks (the start waits for it rather than
    spawning another): same pid, started as a pooled child, inside a cgroup of its
    own where there are any."""
    early = head_start.spawn_early(sys.executable)
    async with Supervisor(gpu_backend=None, pool_size=1, learn_preloads=False) as sup:
        sup.pool.adopt(early)
        app = await sup.start(APPS / "introspect")
        replica = app.status()["replicas"][0]
        assert replica["start"] == "pool"
        child = app.replicas[0].child
        assert child is not None and child.process.pid == early.process.pid
        snapshot = await app.run({})
        assert snapshot["pid"] == child.process.app_pid
        # It imported the runtime without the garbage collector; the app runs with it.
        assert snapshot["collecting"] == [True, True]
        if sup.confinement.cgroups is not None:
            assert child.process.cgroup is not None
            wanted = set(child.process.cgroup.names)
            for pid in (child.process.pid, child.process.app_pid):
                groups = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                assert any(line.split(":", 2)[2] in wanted for line in groups), groups
    assert early.process.poll() is not None  # reaped with the supervisor
    assert not Path(early.workdir).exists()


@pytest.mark.anyio
async def test_a_child_started_unlike_the_pool_is_stopped() -> None:
    early = head_start.spawn_early(sys.executable, preload=("json",))
    async with Supervisor(gpu_backend=None, pool_size=1, learn_preloads=False) as sup:
        sup.pool.adopt(early)
        assert early.process.poll() is not None  # killed and reaped at once
        assert not Path(early.workdir).exists()


@pytest.mark.anyio
async def test_without_a_pool_the_child_is_stopped() -> None:
    early = head_start.spawn_early(sys.executable)
    async with Supervisor(gpu_backend=None, pool_size=0) as sup:
        sup.pool.adopt(early)
        assert early.process.poll() is not None
        assert not Path(early.workdir).exists()


PIDFD_SCRIPT = """
import asyncio, os, subprocess, sys
import anyio
from supervisor.process.child_process import AdoptedProcess

popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])

async def main():
    process = AdoptedProcess(popen)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(process.wait)  # watches the pidfd
        await anyio.wait_all_tasks_blocked()
        popen.wait()  # the child ends and is reaped before the loop hears of it
        assert await process.wait() == 0  # the second waiter: no pause
        read, write = os.pipe()  # gets the pidfd's number if it was closed
        with os.fdopen(read, "rb", buffering=0) as reading:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.connect_read_pipe(asyncio.Protocol, reading)
            transport.close()
        os.close(write)
    print("ok")

anyio.run(main, backend_options={"use_uvloop": True})
"""


def test_a_wait_that_finds_the_child_reaped_leaves_the_watchers_pidfd_open() -> None:
    """Two tasks wait for an adopted child: one watches its pidfd, the other finds
    it already reaped. The second must not close the pidfd under the watcher: uvloop
    would keep a watcher for the number, and the next pipe to get that number could
    not be read (``FileExistsError``, or libuv aborts). In a process of its own."""
    done = subprocess.run(
        [sys.executable, "-c", PIDFD_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.anyio
async def test_a_child_with_an_apps_library_settings_is_taken_by_that_app(tmp_path: Path) -> None:
    """A head start made for an app's key (here its library settings, as a record from
    an earlier ``serve`` gives) is adopted under that key and taken by the app."""
    settings = (("OMP_NUM_THREADS", "1"),)
    early = head_start.spawn_early(sys.executable, import_env=settings)
    learned = tmp_path / "learned.json"
    async with Supervisor(gpu_backend=None, pool_size=1, learn_preloads=learned) as sup:
        sup.pool.adopt(early)
        app = await sup.start(APPS / "plain", env={"OMP_NUM_THREADS": "1"})
        assert app.status()["replicas"][0]["start"] == "pool"
        child = app.replicas[0].child
        assert child is not None and child.process.pid == early.process.pid
    assert early.process.poll() is not None


def test_serve_remembers_the_interpreter_of_its_first_app(tmp_path: Path) -> None:
    app_dir = str(APPS / "plain")
    head_start.remember(tmp_path, app_dir, sys.executable, [("OMP_NUM_THREADS", "2")])
    assert head_start.recalled(str(tmp_path), os.path.realpath(app_dir)) == (
        sys.executable,
        (("OMP_NUM_THREADS", "2"),),
    )
    assert head_start.first_app_dir(["serve", "--port", "80", app_dir]) == os.path.realpath(app_dir)


def test_a_record_never_names_a_program_outside_the_environment_cache(tmp_path: Path) -> None:
    """The record is a file in the user's cache: what it names is run only if it is this
    interpreter or lies inside the cache (as an environment's interpreter does)."""
    root = tmp_path / "envs"
    inside = root / "py3.11-abc" / "bin" / "python"
    inside.parent.mkdir(parents=True)
    inside.symlink_to(sys.executable)  # as a virtualenv's interpreter is
    records = {
        "/apps/outside": {"python": "/bin/sh", "import_env": []},
        "/apps/escape": {"python": str(root / ".." / "python"), "import_env": []},
        "/apps/inside": {"python": str(inside), "import_env": []},
        "/apps/bad-settings": {"python": sys.executable, "import_env": [["A"]]},
        "/apps/not-a-dict": ["python"],
    }
    (root / head_start.RECORD_FILE).write_text(json.dumps(records))
    assert head_start.recalled(str(root), "/apps/outside") is None
    assert head_start.recalled(str(root), "/apps/escape") is None
    assert head_start.recalled(str(root), "/apps/inside") == (str(inside), ())
    assert head_start.recalled(str(root), "/apps/bad-settings") is None
    assert head_start.recalled(str(root), "/apps/not-a-dict") is None
    (root / head_start.RECORD_FILE).write_text("{not json")
    assert head_start.recalled(str(root), "/apps/inside") is None


def test_discarding_the_child_kills_its_whole_group(tmp_path: Path, wait_gone: WaitGone) -> None:
    """The head-start child's reaper forks the runtime into its own process group:
    killing the reaper alone would leave the runtime to its parent-death signal,
    running on after ``serve`` has gone. Here the group holds a process with no
    such signal, which only a kill of the whole group ends."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 600 & echo $!; wait"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    leader.stdout.close()
    from_child, to_child, stderr = (os.open(os.devnull, os.O_RDWR) for _ in range(3))
    workdir = tmp_path / "head"
    workdir.mkdir()
    early = head_start.EarlyChild(
        leader, sys.executable, (), (), 0, str(workdir), (from_child, to_child), stderr
    )
    early.close()  # closes the three descriptors it was given
    assert wait_gone([member], timeout=10) == []
    assert not workdir.exists()
