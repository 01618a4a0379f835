"""Node.js apps through the supervisor: discovery and schemas, files with the real
``@inferencesh/app``, setup and unload, streaming, logs, crashes and restarts,
cancel of a busy loop, liveness while app code spins, the pool, bad manifests."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from node_helpers import APPS

from supervisor import RestartPolicy, Supervisor
from supervisor import errors as E
from supervisor.environments import node_runtime
from supervisor.environments.node_packages import PACKAGE_DIR_ENV, app_packages
from supervisor.environments.node_runtime import find_node
from supervisor.events import LogEvent, PartialEvent, ResultEvent
from supervisor.process.describe import describe_app

pytestmark = pytest.mark.anyio
KITCHEN = APPS / "node_kitchen"
ZOD3 = APPS / "node_zod3"
FILE = {"type": "string", "format": "file"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def no_leftover_processes(kitchen_env: dict[str, str]) -> Iterator[None]:
    """Every child (and grandchild) a test started is gone when it ends."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        # Not what those started: a module-scoped ``serve`` may renew its fork server.
        left = [p for p in psutil.Process().children(recursive=True) if not _started_by(p, before)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, [p.cmdline() for p in left]


def _started_by(process: psutil.Process, pids: set[int]) -> bool:
    try:
        return bool({process.pid, *(parent.pid for parent in process.parents())} & pids)
    except psutil.Error:
        return True  # gone


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[str]:
    """A local HTTP server for ``directory``'s files, for URL inputs."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def supervisor(**options: Any) -> Supervisor:
    """No pool unless a test asks for one: its idle Python children would serve no
    Node.js app here."""
    defaults: dict[str, Any] = {
        "gpu_backend": None,
        "pool_size": 0,
        "cancel_grace": 1.0,
        "restart_policy": RestartPolicy(max_restarts=5, window=60),
    }
    return Supervisor(**{**defaults, **options})


# -- discovery and schemas ----------------------------------------------------------


@pytest.mark.parametrize("app_dir", [KITCHEN, ZOD3], ids=["zod4", "zod3-under-src"])
def test_every_field_type_has_its_json_schema(app_dir: Path) -> None:
    description = describe_app(app_dir)
    run = description["functions"]["run"]
    props = run["input_schema"]["properties"]
    text = "name" if app_dir == KITCHEN else "text"
    number = "times" if app_dir == KITCHEN else "count"
    flag = "loud" if app_dir == KITCHEN else "flag"
    assert props[text]["type"] == "string" and props[text]["description"]
    assert props[number] == {"type": "number"}
    assert props[flag] == {"type": "boolean"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    mode = props["mode"]
    assert mode["type"] == "string" and set(mode["enum"]) in ({"plain", "fancy"}, {"a", "b"})
    assert {k: v for k, v in props["image"].items() if k != "description"} == FILE
    assert props["doc"] == FILE
    assert run["output_schema"]["properties"]["file"] == FILE
    required = set(run["input_schema"]["required"])
    assert number not in required and "doc" not in required and text in required
    # zod drops unknown keys rather than refusing them
    assert run["input_schema"].get("additionalProperties", True) is True
    assert run["description"]


def test_functions_are_the_input_output_pairs() -> None:
    description = describe_app(KITCHEN)
    assert set(description["functions"]) == {
        "run",
        "reverse",
        "count",
        "noisy",
        "chatter",
        "hold",
        "crash",
        "spin",
        "env",
    }
    assert description["functions"]["count"]["streaming"] is True
    assert set(describe_app(ZOD3)["functions"]) == {"run", "shout"}


# -- requests -------------------------------------------------------------------------


async def test_files_in_and_out_with_the_real_sdk(tmp_path: Path) -> None:
    image = tmp_path / "image.bin"
    image.write_bytes(b"x" * 123)
    doc = tmp_path / "doc.txt"
    doc.write_text("four")
    async with supervisor() as sup:
        cache = {"FILE_CACHE_DIR": str(tmp_path / "downloads")}
        app = await sup.start(KITCHEN, setup={"greeting": "Hi"}, env=cache)
        out = await app.run({"name": "Ada", "image": str(image), "doc": str(doc)})
        assert out["greeting"] == "Hi, Ada!"
        assert out["image_size"] == 123 and out["doc_size"] == 4
        assert set(out["file"]) == {"path", "content_type", "size", "filename"}
        assert out["file"]["content_type"] == "text/plain"
        assert Path(out["file"]["path"]).read_text() == "Hi, Ada!"
        data_uri = "data:application/octet-stream;base64," + base64.b64encode(b"12345").decode()
        assert (await app.run({"name": "Bo", "image": data_uri}))["image_size"] == 5
        with serving(tmp_path) as base_url:
            downloaded = await app.run({"name": "Cy", "image": f"{base_url}/image.bin"})
        assert downloaded["image_size"] == 123
        zod3 = await sup.start(ZOD3)
        echoed = await zod3.run(
            {"text": "t", "flag": True, "tags": [], "mode": "b", "image": str(image)}
        )
        assert echoed["text"] == "t b" and echoed["file"]["size"] == 123


async def test_setup_then_unload_on_stop(tmp_path: Path) -> None:
    marker = tmp_path / "unloaded"
    async with supervisor() as sup:
        app = await sup.start(KITCHEN, setup={"marker": str(marker)})
        assert (await app.run({"text": "abc"}, function="reverse"))["text"] == "cba"
        assert not marker.exists()
        await app.stop()
        assert marker.read_text() == "unloaded"


async def test_streaming_and_logs_reach_the_caller() -> None:
    async with supervisor() as sup:
        app = await sup.start(KITCHEN)
        events = [e async for e in app.stream({"n": 3}, function="count")]
        assert [e.output for e in events if isinstance(e, PartialEvent)] == [
            {"i": 1},
            {"i": 2},
            {"i": 3},
        ]
        assert isinstance(events[-1], ResultEvent) and events[-1].output == {"i": 3}
        noisy = [e async for e in app.stream({"text": "y"}, function="noisy")]
        logs = {(e.stream, e.message) for e in noisy if isinstance(e, LogEvent)}
        assert ("stdout", "console.log: y") in logs
        assert ("stdout", "stdout.write: y") in logs
        assert ("stdout", "fd 1: y") in logs
        assert ("stdout", "subprocess: y") in logs
        assert ("stderr", "console.error: y") in logs
        assert isinstance(noisy[-1], ResultEvent) and noisy[-1].output == {"ok": True}


async def test_validation_and_app_errors_are_structured() -> None:
    async with supervisor() as sup:
        app = await sup.start(KITCHEN)
        with pytest.raises(E.InputValidationError) as invalid:
            await app.run({"text": 1}, function="reverse")
        assert invalid.value.errors[0]["loc"] == ["text"]
        with pytest.raises(E.UnknownFunctionError):
            await app.run({}, function="missing")
        with pytest.raises(E.AppExceptionError) as raised:
            await app.run({"how": "reject"}, function="crash")
        assert "TypeError: the app failed on purpose" in (raised.value.traceback or "")


# -- crashes, cancel, liveness ----------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("exit", {"exit_code": 3}),
        ("throw", {"exit_code": 1}),
        ("sigkill", {"signal": "SIGKILL"}),
    ],
)
async def test_a_crash_fails_its_request_and_the_app_restarts(
    how: str, expected: dict[str, Any]
) -> None:
    async with supervisor() as sup:
        app = await sup.start(KITCHEN)
        first = (await app.run({}, function="env"))["pid"]
        with pytest.raises(E.ChildCrashedError) as crashed:
            await app.run({"how": how}, function="crash")
        assert expected.items() <= crashed.value.details.items()
        if how == "throw":
            assert "thrown outside any request" in crashed.value.details["stderr"]
        second = (await app.run({}, function="env"))["pid"]
        assert second != first and not psutil.pid_exists(first)
        assert app.status()["restarts"] == 1


async def test_cancel_of_a_busy_loop_ends_the_request_and_the_app_recovers(
    tmp_path: Path,
) -> None:
    started = tmp_path / "started"
    async with supervisor() as sup:
        app = await sup.start(KITCHEN)
        request = app.submit({"started": str(started)}, function="spin")
        with anyio.fail_after(30):
            while not started.exists():
                await anyio.sleep(0.02)
        assert await app.cancel(request.id)
        with pytest.raises(E.RequestCancelledError):
            await request.result()
        assert (await app.run({"text": "ok"}, function="reverse"))["text"] == "ko"


async def test_a_run_timeout_on_a_busy_loop_restarts_the_child() -> None:
    async with supervisor() as sup:
        app = await sup.start(KITCHEN, run_timeout=1.0)
        first = (await app.run({}, function="env"))["pid"]
        with pytest.raises(E.RequestTimeoutError):
            await app.run({}, function="spin")
        assert (await app.run({}, function="env"))["pid"] != first


async def test_replicas_are_separate_node_children() -> None:
    async with supervisor() as sup:
        app = await sup.start(KITCHEN, replicas=2)
        async with anyio.create_task_group() as tasks:
            for _ in range(2):
                tasks.start_soon(partial(app.run, {"seconds": 0.3}, function="spin"))
        pids = app.status()["pids"]
        assert len(set(pids)) == 2
        assert all("main.js" in " ".join(psutil.Process(pid).cmdline()) for pid in pids)


async def test_a_spinning_child_still_answers_heartbeats() -> None:
    """The heartbeat timeout is far shorter than the spin: the child is not killed
    (this matters once the supervisor pings busy children too; the protocol-level
    test_pings_are_answered_while_app_code_spins checks the child itself)."""
    async with supervisor(heartbeat_interval=0.1, heartbeat_timeout=1.0) as sup:
        app = await sup.start(KITCHEN)
        out = await app.run({"seconds": 3}, function="spin")
        assert out["spun"] > 0
        assert app.status()["restarts"] == 0


async def test_pooled_node_children_serve_restarts(kitchen_env: dict[str, str]) -> None:
    async with supervisor(pool_size=1) as sup:
        app = await sup.start(KITCHEN, env={"KITCHEN_VALUE": "from start"})
        for _ in range(200):  # the pool refills with a node child once one was asked for
            if sup.pool.status()["idle"].get("node:(none)"):
                break
            await anyio.sleep(0.05)
        assert sup.pool.status()["idle"].get("node:(none)") == 1
        handed = sup.pool.handed_out
        with pytest.raises(E.ChildCrashedError):
            await app.run({"how": "exit"}, function="crash")
        out = await app.run({}, function="env")
        assert sup.pool.handed_out == handed + 1
        assert out["value"] == "from start" and out["cwd"] == str(KITCHEN)


async def test_a_vram_budget_restarts_a_node_child_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GPU placement and VRAM budgets follow the child's pid, whatever its runtime
    (the fake NVML backend reports the usage the test writes for that pid)."""
    nvml = tmp_path / "nvml.json"
    devices = [{"index": 0, "name": "Fake GPU 0", "total_mib": 16384}]
    nvml.write_text(json.dumps({"devices": devices, "processes": {}}))
    monkeypatch.setenv("SUPERVISOR_FAKE_NVML", str(nvml))
    async with supervisor(gpu_backend="auto", budget_grace=0.3, monitor_interval=0.1) as sup:
        app = await sup.start(KITCHEN, gpus=1, vram_budget=2 * 2**30)
        first = await app.run({}, function="env")
        assert first["gpus"] == "0"
        usage = {str(first["pid"]): {"0": 4096}}
        nvml.write_text(json.dumps({"devices": devices, "processes": usage}))
        with anyio.fail_after(30):
            while app.status()["restarts"] < 1:
                await anyio.sleep(0.05)
        assert "VRAM" in app.status()["last_exit"]["reason"]
        assert (await app.run({}, function="env"))["pid"] != first["pid"]


# -- manifests and environments ----------------------------------------------------------


async def test_a_package_that_cannot_be_installed_is_environment_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPVISOR_CACHE_DIR", str(tmp_path / "cache"))
    app_dir = tmp_path / "bad"
    shutil.copytree(KITCHEN, app_dir)
    (app_dir / "package-lock.json").unlink()
    (app_dir / "package.json").write_text('{"name": "bad", "dependencies": {"zod": "not a')
    async with supervisor() as sup:
        with pytest.raises(E.EnvironmentFailedError) as failed:
            await sup.start(app_dir)
    assert failed.value.type == "environment_failed"
    assert "npm install exited with" in failed.value.message
    assert not any((tmp_path / "cache" / "node-packages").iterdir())


async def test_a_kernel_newer_than_node_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_dir = tmp_path / "future"
    shutil.copytree(KITCHEN, app_dir)
    (app_dir / "inf.yml").write_text("name: future\nkernel: node-99\n")
    async with supervisor() as sup:
        with pytest.raises(E.EnvironmentFailedError) as refused:
            await sup.start(app_dir)
        assert "asks for node-99" in refused.value.message
        monkeypatch.setenv("APPVISOR_ALLOW_OLDER_NODE", "1")
        app = await sup.start(app_dir)
        assert (await app.run({"text": "ab"}, function="reverse"))["text"] == "ba"


async def test_missing_node_is_environment_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPVISOR_NODE", "/nonexistent/node")
    async with supervisor() as sup:
        with pytest.raises(E.EnvironmentFailedError, match="/nonexistent/node"):
            await sup.start(KITCHEN)


async def test_a_node_kernel_without_inference_js_is_load_failed(tmp_path: Path) -> None:
    (tmp_path / "inf.yml").write_text("kernel: node-22\n")
    (tmp_path / "inference.py").write_text("")
    async with supervisor() as sup:
        with pytest.raises(E.LoadFailedError, match=r"needs inference\.js"):
            await sup.start(tmp_path)


def test_identical_manifests_share_one_installation(kitchen_env: dict[str, str]) -> None:
    """The kitchen and a copy of its manifest resolve to the same cache directory."""
    with tempfile.TemporaryDirectory() as copy:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(KITCHEN / name, Path(copy) / name)
        major = find_node(None)[1][0]
        assert (
            str(app_packages(Path(copy), major, logging.getLogger("t")))
            == (kitchen_env[PACKAGE_DIR_ENV])
        )


def test_the_runtime_installs_its_own_packages_into_the_cache_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout (or an installed package) without child/node/node_modules gets a
    cached copy of the runtime with its locked packages; the source is not written."""
    source = tmp_path / "source"
    source.mkdir()
    for path in node_runtime.CHILD_SOURCE.iterdir():
        if path.is_file():
            shutil.copy(path, source / path.name)
    monkeypatch.setattr(node_runtime, "CHILD_SOURCE", source)
    monkeypatch.setenv("APPVISOR_CACHE_DIR", str(tmp_path / "cache"))
    runtime = node_runtime.child_runtime_dir()
    assert runtime.parent == tmp_path / "cache" / "node-child"
    assert (runtime / "node_modules" / "@msgpack" / "msgpack").is_dir()
    assert (runtime / "main.js").read_bytes() == (source / "main.js").read_bytes()
    assert not (source / "node_modules").exists()
    assert node_runtime.child_runtime_dir() == runtime  # the second call finds it
