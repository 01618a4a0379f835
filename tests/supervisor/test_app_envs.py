"""Each app in its own environment, built from its requirements with real installs.

The environments live in one temporary cache for the whole session, so that
the two pinned ones (the oldest and newest runtime dependencies public apps
lock) are built once and reused by the tests after the first; the package
downloads go to the installer's own cache as usual.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from env_apps import NEW_LOCK, OLD_LOCK, make_app
from sup_helpers import make_supervisor, wait_for

from supervisor import errors
from supervisor.environments.env_cache import EnvCache
from supervisor.environments.env_spec import env_spec
from supervisor.environments.interpreters import find_interpreter, host_interpreter

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.usefixtures("no_leftover_processes"),
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="session")
def env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envs")


@pytest.fixture(scope="session")
def apps_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("env-apps")


async def test_two_apps_pinning_conflicting_versions_each_see_their_own(
    env_root: Path, apps_root: Path
) -> None:
    old_dir = make_app(apps_root, "old", lock=OLD_LOCK)
    new_dir = make_app(apps_root, "new", lock=NEW_LOCK)
    seen_installing: list[dict[str, Any]] = []
    async with make_supervisor(env_cache=env_root, pool_size=0) as sup:

        async def watch() -> None:
            while True:
                for status in sup.status()["apps"].values():
                    if status["state"] == "installing":
                        seen_installing.append(status)
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch)
            async with anyio.create_task_group() as starts:
                starts.start_soon(sup.start, old_dir)
                starts.start_soon(sup.start, new_dir)
            tasks.cancel_scope.cancel()
        old, new = sup.apps["old"], sup.apps["new"]
        old_out, new_out = await old.run({"text": "a"}), await new.run({"text": "b"})
        old_status, new_status = old.status(), new.status()
    assert old_out["versions"] == {
        "six": "1.16.0",
        "pydantic": "2.10.6",
        "anyio": "4.10.0",
        "msgpack": "1.1.1",
        "inferencesh": "0.2.7",
    }
    assert new_out["versions"] == {
        "six": "1.17.0",
        "pydantic": "2.13.4",
        "anyio": "4.14.0",
        "msgpack": "1.2.1",
        "inferencesh": "0.7.23",
    }
    assert (old_out["text"], new_out["text"]) == ("A", "B")
    assert Path(old_out["prefix"]).parent == Path(new_out["prefix"]).parent == env_root
    assert old_status["environment"]["env"] == Path(old_out["prefix"]).name
    assert new_status["environment"]["requirements"] == "requirements.lock"
    # Only this test builds "old" (other tests may have built "new" before it).
    installing = {s["name"]: s for s in seen_installing}
    assert installing["old"]["environment"]["env"] == old_status["environment"]["env"]
    assert installing["old"]["ready"] is False


async def test_a_second_app_of_the_same_environment_is_served_from_the_pool(
    env_root: Path, apps_root: Path
) -> None:
    first = make_app(apps_root, "pool-first", lock=NEW_LOCK)
    second = make_app(apps_root, "pool-second", lock=NEW_LOCK)
    async with make_supervisor(env_cache=env_root, pool_size=1) as sup:
        app = await sup.start(first)
        python = app.replicas[0].spec.python
        assert python.startswith(str(env_root))
        # Once an app of this environment runs, the pool keeps a child of it ready.
        await wait_for(lambda: sup.pool.idle_count_for(python) == 1, timeout=60)
        handed_out = sup.pool.handed_out
        other = await sup.start(second)
        assert sup.pool.handed_out == handed_out + 1
        first_out, second_out = await app.run({}), await other.run({})
    assert second_out["prefix"] == first_out["prefix"]
    assert second_out["versions"]["six"] == "1.17.0"
    # Installed with its bytecode: no child start compiles the environment again.
    site = next(Path(first_out["prefix"]).glob("lib/python3.*/site-packages"))
    assert list((site / "__pycache__").glob("six.cpython-*.pyc"))


async def test_concurrent_starts_build_one_environment_once(
    tmp_path: Path, apps_root: Path
) -> None:
    lock = NEW_LOCK.replace("six==1.17.0\n", "")  # a key of its own, from cached downloads
    dirs = [make_app(tmp_path / "apps", f"same-{i}", lock=lock) for i in range(2)]
    async with make_supervisor(env_cache=tmp_path / "envs", pool_size=0) as sup:
        async with anyio.create_task_group() as starts:
            for directory in dirs:
                starts.start_soon(sup.start, directory)
        outputs = [await sup.apps[f"same-{i}"].run({}) for i in range(2)]
        assert sup.env_cache is not None and sup.env_cache.builds == 1
    assert outputs[0]["prefix"] == outputs[1]["prefix"]
    assert outputs[0]["versions"]["six"] is None
    # Two caches on one directory (two supervisors) agree through the file lock.
    other_dir = make_app(tmp_path / "apps", "other", lock=lock + "tqdm==4.67.1\n")
    spec = env_spec(other_dir, host_interpreter())
    assert spec is not None
    caches = [EnvCache(tmp_path / "envs"), EnvCache(tmp_path / "envs")]
    pythons: list[str] = []

    async def ensure(cache: EnvCache) -> None:
        pythons.append(await cache.ensure(spec))

    async with anyio.create_task_group() as tasks:
        for cache in caches:
            tasks.start_soon(ensure, cache)
    assert pythons[0] == pythons[1]
    assert sum(cache.builds for cache in caches) == 1


async def test_a_failing_requirement_is_environment_failed(tmp_path: Path, env_root: Path) -> None:
    bad = "six==1.17.0\nappvisor-no-such-package-7f3e9a==1.0\n"
    app_dir = make_app(tmp_path, "bad", requirements=bad)
    async with make_supervisor(env_cache=env_root, pool_size=0) as sup:
        with pytest.raises(errors.EnvironmentFailedError) as caught:
            await sup.start(app_dir)
        assert sup.apps == {} and sup.installing == {}
    error = caught.value
    assert error.type == "environment_failed"
    assert error.details["requirement"] == "appvisor-no-such-package-7f3e9a==1.0"
    assert "appvisor-no-such-package-7f3e9a" in error.details["installer_output"]
    assert "appvisor-no-such-package-7f3e9a==1.0" in error.message
    spec = env_spec(app_dir, host_interpreter())
    assert spec is not None and not (env_root / spec.key).exists()  # nothing half-built


@pytest.mark.skipif(find_interpreter("3.10") is None, reason="no Python 3.10 interpreter found")
async def test_a_python_310_app_runs_on_310(env_root: Path, tmp_path: Path) -> None:
    # Only six is pinned: the runtime's own dependencies are resolved for 3.10.
    app_dir = make_app(tmp_path, "py310", requirements="six==1.16.0\n", kernel="python-3.10")
    async with make_supervisor(env_cache=env_root, pool_size=0) as sup:
        app = await sup.start(app_dir)
        output = await app.run({"text": "x"})
        status = app.status()
    assert output["python"].startswith("3.10.")
    assert output["versions"]["six"] == "1.16.0"
    assert output["versions"]["inferencesh"] is None  # served by the runtime's stand-in
    assert status["environment"]["python_version"].startswith("3.10.")


async def test_a_missing_interpreter_is_named_unless_the_host_may_stand_in(
    env_root: Path, apps_root: Path
) -> None:
    app_dir = make_app(apps_root, "ancient", lock=NEW_LOCK, kernel="python-3.4")
    async with make_supervisor(env_cache=env_root, pool_size=0) as sup:
        with pytest.raises(errors.InterpreterMissingError, match=r"Python 3\.4") as caught:
            await sup.start(app_dir)
    assert "--allow-host-python" in caught.value.message
    assert caught.value.to_dict()["python_version"] == "3.4"
    async with make_supervisor(env_cache=env_root, pool_size=0, allow_host_python=True) as sup:
        app = await sup.start(app_dir)  # the host's version: the same env as "new"
        output = await app.run({})
        warnings = app.status()["warnings"]
    assert output["versions"]["six"] == "1.17.0"
    assert any("3.4" in w and "not installed" in w for w in warnings)


async def test_without_app_envs_the_supervisor_interpreter_runs_the_app(
    tmp_path: Path, apps_root: Path
) -> None:
    app_dir = make_app(apps_root, "plain-host", lock=OLD_LOCK)
    async with make_supervisor(env_cache=tmp_path, app_envs=False, pool_size=0) as sup:
        app = await sup.start(app_dir)
        output = await app.run({})
        assert app.status()["environment"] == {"python": sys.executable, "env": None}
    assert output["prefix"] == sys.prefix
    assert list(tmp_path.iterdir()) == []  # nothing built


class SlowInstaller(EnvCache):
    """Builds by running a shell line that says it started, then waits."""

    def _commands(self, spec: Any, path: Path) -> list[tuple[list[str], Path]]:
        script = f"mkdir -p '{path}/bin' && echo started && exec sleep 60"
        return [(["sh", "-c", script], self.root)]


async def test_a_cancelled_build_leaves_no_process_and_no_half_environment(
    tmp_path: Path,
) -> None:
    app_dir = make_app(tmp_path / "apps", "slow", requirements="six==1.17.0\n")
    spec = env_spec(app_dir, host_interpreter())
    assert spec is not None
    cache = SlowInstaller(tmp_path / "envs")
    started = anyio.Event()

    def progress(line: str) -> None:
        if line == "started":
            started.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(cache.ensure, spec, progress)
        with anyio.fail_after(30):
            await started.wait()
        assert (tmp_path / "envs" / spec.key).is_dir()
        tasks.cancel_scope.cancel()
    assert not (tmp_path / "envs" / spec.key).exists()
    assert cache.builds == 0


async def test_a_half_built_environment_is_built_again(tmp_path: Path, env_root: Path) -> None:
    lock = NEW_LOCK.replace("six==1.17.0\n", "six==1.16.0\n")  # a key of its own
    app_dir = make_app(tmp_path, "rebuilt", lock=lock)
    spec = env_spec(app_dir, host_interpreter())
    assert spec is not None
    leftover = env_root / spec.key
    (leftover / "bin").mkdir(parents=True)
    (leftover / "junk").write_text("from a build that died")
    lines: list[str] = []
    cache = EnvCache(env_root)
    python = await cache.ensure(spec, lines.append)
    assert cache.builds == 1
    assert not (leftover / "junk").exists()
    assert python == str(leftover / "bin" / "python")
    assert any("unfinished build" in line for line in lines)
    assert await cache.ensure(spec) == python and cache.builds == 1  # now it is ready


async def test_offline_builds_come_from_the_installers_cache(
    env_root: Path, apps_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``UV_OFFLINE`` (the installer's own setting) reaches it: with the wheels
    cached (the "new" environment), a build needs no index."""
    cache = EnvCache(env_root)
    if cache.installer != "uv":
        pytest.skip("uv is not installed")
    new = env_spec(make_app(apps_root, "new-again", lock=NEW_LOCK), host_interpreter())
    assert new is not None
    await cache.ensure(new)  # the wheels are in uv's cache from here on
    monkeypatch.setenv("UV_OFFLINE", "1")
    # The same packages, written so that the environment is another one.
    twin = make_app(apps_root, "offline-twin", lock=NEW_LOCK + "six==1.17.0\n")
    spec = env_spec(twin, host_interpreter())
    assert spec is not None and spec.key != new.key
    assert (await cache.ensure(spec)).startswith(str(env_root / spec.key))
    absent = make_app(apps_root, "offline-absent", requirements="appvisor-never-cached==1.0\n")
    absent_spec = env_spec(absent, host_interpreter())
    assert absent_spec is not None
    with pytest.raises(errors.EnvironmentFailedError) as caught:
        await cache.ensure(absent_spec)
    assert caught.value.details["requirement"] == "appvisor-never-cached==1.0"
