"""Learned preloads: a fork server imports what apps of its environment imported.

The app ``learns_imports`` imports ``colorsys`` when loaded and ``graphlib`` in
its setup, and reports which of them were already imported when its module began
to run: only in a child of a fork server that learned them.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from sup_helpers import make_supervisor, wait_for

from child.import_record import imported_since, library_roots
from supervisor import Supervisor
from supervisor.process.learned_preloads import (
    LEARNED_PRELOADS_FILE,
    MAX_PER_KEY,
    LearnedPreloads,
    valid_names,
)
from supervisor.process.pool import ChildPool, PoolKey, _learned_key

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "tests" / "apps" / "learns_imports"


# -- what a child reports ------------------------------------------------------


def test_only_library_modules_imported_since_the_snapshot_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library, app = tmp_path / "site-packages", tmp_path / "app"
    before = set(sys.modules)
    fakes = {
        "fake_lib": library / "fake_lib" / "__init__.py",
        "fake_lib.lazy": library / "fake_lib" / "lazy.py",
        "app_helper": app / "app_helper.py",
    }
    for name, path in fakes.items():
        module = types.ModuleType(name)
        module.__file__ = str(path)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "no_file", types.ModuleType("no_file"))
    roots = (str(library) + "/",)
    assert imported_since(before, roots) == ["fake_lib", "fake_lib.lazy"]
    assert imported_since(set(sys.modules), roots) == []


def test_the_interpreters_own_libraries_are_the_roots() -> None:
    roots = library_roots()
    assert any(json.__file__.startswith(root) for root in roots)  # the standard library
    assert any(psutil.__file__.startswith(root) for root in roots)  # site-packages
    assert not any(str(ROOT).startswith(root.rstrip("/")) for root in roots)


# -- what the supervisor keeps -------------------------------------------------


def test_names_are_checked_deduplicated_and_bounded(tmp_path: Path) -> None:
    assert valid_names(["a.b", "a.b", "c", "os;rm", "../x", 3, "", "x" * 300, "_p.q1"]) == [
        "a.b",
        "c",
        "_p.q1",
    ]
    learned = LearnedPreloads(tmp_path / "l.json")
    assert learned.learn("k", [f"m{i}" for i in range(MAX_PER_KEY + 10)])
    assert len(learned.get("k")) == MAX_PER_KEY
    assert not learned.learn("k", ["more"])  # full


def test_learned_modules_outlive_the_supervisor_in_their_file(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "learned.json"
    first = LearnedPreloads(path)
    assert first.learn("key", ["torch", "torch.nn"])
    assert not first.learn("key", ["torch"])  # nothing new
    assert first.learn("key", ["transformers"])
    assert LearnedPreloads(path).get("key") == ("torch", "torch.nn", "transformers")
    first.forget("key")
    assert LearnedPreloads(path).get("key") == ()
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporaries


@pytest.mark.parametrize(
    "content", ["not json", "[1, 2]", '{"key": "torch"}', '{"key": ["os; rm -rf /", "ok"]}']
)
def test_a_damaged_file_is_ignored_or_cleaned(tmp_path: Path, content: str) -> None:
    path = tmp_path / "learned.json"
    path.write_text(content)
    assert LearnedPreloads(path).get("key") in ((), ("ok",))


def test_library_settings_key_the_children_once_libraries_may_be_preloaded() -> None:
    """A zygote that learned torch imported it with its own ``OMP_NUM_THREADS``: an
    app that sets another value must get children of another zygote."""
    env = {"OMP_NUM_THREADS": "3", "APP_SETTING": "x"}
    learning = ChildPool(1, learned=LearnedPreloads())
    assert learning.key(sys.executable, (), env).import_env == (("OMP_NUM_THREADS", "3"),)
    assert learning.key(sys.executable, (), {}) != learning.key(sys.executable, (), env)
    not_learning = ChildPool(1, learned=None)
    assert not_learning.key(sys.executable, (), env).import_env == ()
    assert not_learning.key(sys.executable, ("numpy",), env).import_env == (
        ("OMP_NUM_THREADS", "3"),
    )
    spawning = ChildPool(1, fork_server=False, learned=LearnedPreloads())
    assert spawning.key(sys.executable, (), env).import_env == ()


# -- end to end ----------------------------------------------------------------


async def _run(sup: Supervisor, name: str) -> dict[str, Any]:
    app = await sup.start(APP, name=name)
    output = dict(await app.run({}))
    output["start"] = app.status()["replicas"][0]["start"]
    return output


def _running(pid: int) -> bool:
    """Not exited (a zombie has); it may exit between any two questions about it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _server(sup: Supervisor) -> dict[str, Any]:
    (server,) = sup.pool.status()["fork_servers"].values()
    return dict(server)


@pytest.mark.anyio
@pytest.mark.usefixtures("no_leftover_processes")
async def test_a_fork_server_learns_what_an_app_imported_and_its_next_children_have_it(
    tmp_path: Path,
) -> None:
    async with make_supervisor(pool_size=1, fork_server=True, env_cache=tmp_path) as sup:
        await wait_for(lambda: sup.pool.settled() and sup.pool.status()["fork_servers"], 60)
        old = _server(sup)
        assert old["learned"] == 0
        first = await _run(sup, "first")
        assert first["start"] == "pool"
        assert first["already"] == {"colorsys": False, "graphlib": False, "sched": False}
        assert first["helper"] == "helper"

        # Replaced in the background by a zygote that also imports them.
        await wait_for(lambda: _server(sup)["pid"] != old["pid"] and sup.pool.settled(), 60)
        assert _server(sup)["learned"] >= 2
        # The old zygote still has the first app's child: it stays until that exits.
        assert psutil.pid_exists(old["pid"])

        second = await _run(sup, "second")
        assert second["start"] in ("pool", "fork")
        # Loaded and set up: learned. Imported by a run only: not.
        assert second["already"] == {"colorsys": True, "graphlib": True, "sched": False}
        assert second["helper"] == "helper"  # the app's own module, imported afresh

        await sup.apps["first"].stop()
        with anyio.fail_after(30):
            while _running(old["pid"]):
                await anyio.sleep(0.05)

    (names,) = json.loads((tmp_path / LEARNED_PRELOADS_FILE).read_text()).values()
    assert "colorsys" in names and "graphlib" in names
    assert "sched" not in names
    assert not [n for n in names if "learns_imports" in n or n == "inference"]

    # The next supervisor's zygote has them from its start.
    async with make_supervisor(pool_size=1, fork_server=True, env_cache=tmp_path) as sup:
        await wait_for(lambda: sup.pool.settled() and sup.pool.status()["fork_servers"], 60)
        assert _server(sup)["learned"] == len(names)
        third = await _run(sup, "third")
        assert third["already"]["colorsys"] and third["already"]["graphlib"]


@pytest.mark.anyio
@pytest.mark.usefixtures("no_leftover_processes")
async def test_learned_modules_that_spoil_the_zygote_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    )
    cache = tmp_path / "cache"
    key = _learned_key(PoolKey(sys.executable))
    LearnedPreloads(cache / LEARNED_PRELOADS_FILE).learn(key, ["colorsys", "starts_a_thread"])
    with caplog.at_level("WARNING", logger="supervisor.pool"):
        async with make_supervisor(pool_size=1, fork_server=True, env_cache=cache) as sup:
            await wait_for(lambda: sup.pool.settled(), 60)
            server = _server(sup)
            assert server["ready"] and server["learned"] == 0
            app = await _run(sup, "app")
            assert app["already"]["colorsys"] is False
    assert "its preloads started 1 Python thread(s)" in caplog.text
    # Forgotten; what the app imported meanwhile is learned again.
    assert "starts_a_thread" not in LearnedPreloads(cache / LEARNED_PRELOADS_FILE).get(key)


@pytest.mark.anyio
async def test_nothing_is_learned_when_turned_off(tmp_path: Path) -> None:
    async with make_supervisor(
        pool_size=1, fork_server=True, env_cache=tmp_path, learn_preloads=False
    ) as sup:
        await wait_for(lambda: sup.pool.settled() and sup.pool.status()["fork_servers"], 60)
        await _run(sup, "first")  # learning writes the file as the setup ends
        assert sup.pool.learned is None
    assert not (tmp_path / LEARNED_PRELOADS_FILE).exists()
