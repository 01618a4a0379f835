"""Acceptance tests of ``python -m child``: real processes, the real protocol.

Each test starts the child as a supervisor would (``spawn``/``child``/``ready``
from conftest.py) and checks what comes back on the wire. Apps live in
``tests/apps``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
from pathlib import Path

import psutil
import pytest

from protocol import Error, ErrorType, Load, Log, Partial, Progress, Result, Setup, Unload, Unloaded

APPS = Path(__file__).resolve().parents[1] / "apps"


def app(name: str) -> str:
    return str(APPS / name)


def ok(terminal: Result | Error) -> object:
    """The output of a successful request (fails the test on an error)."""
    assert isinstance(terminal, Result), f"expected a result, got {terminal!r}"
    return terminal.output


def failed(terminal: Result | Error, error_type: ErrorType) -> Error:
    assert isinstance(terminal, Error), f"expected an error, got {terminal!r}"
    assert terminal.error.type is error_type, terminal.error
    return terminal


# -- happy paths --------------------------------------------------------------


def test_multi_app_full_session(child):
    events, loaded = child.load(app("multi"))
    description = ok(loaded)
    assert description["name"] == "multi"  # from inf.yml
    assert set(description["functions"]) == {"run", "reverse", "count", "add"}
    assert description["functions"]["count"]["streaming"] is True
    assert description["functions"]["add"]["streaming"] is False
    assert "greeting" in description["setup_schema"]["properties"]

    _, done = child.setup({"greeting": "Hi"})
    # What loading and setting it up imported from the libraries, not its own modules.
    imports = ok(done)["imports"]
    assert list(ok(done)) == ["imports"] and imports
    assert all(isinstance(name, str) for name in imports)
    assert not [n for n in imports if n.startswith("_app_") or n.split(".")[0] == "helper"]

    _, result = child.run("run", {"name": "Ada"})
    assert ok(result)["greeting"] == "Hi, Ada"

    _, result = child.run("reverse", {"text": "abc", "shout": True})
    assert ok(result)["text"] == "CBA!"  # helper.shout, imported relatively

    _, result = child.run("add", {"a": 1.5, "b": 2})  # a sync function
    assert ok(result)["sum"] == 3.5

    events, result = child.run("count", {"n": 4})  # an async generator
    partials = [e for e in events if isinstance(e, Partial)]
    assert [p.output["n"] for p in partials] == [1, 2, 3, 4]
    assert ok(result) == partials[-1].output

    assert child.ping().seq >= 1
    before = child.unload()
    assert not [m for m in before if isinstance(m, (Result, Error))]
    assert child.wait() == 0


def test_app_dir_on_the_command_line(spawn):
    driver = spawn(app("multi"))
    hello = driver.hello()
    assert hello.app is not None
    assert hello.app["name"] == "multi"
    assert set(hello.app["functions"]) == {"run", "reverse", "count", "add"}
    # The spawned process stays behind as the reaper; the runtime is its child.
    assert psutil.Process(hello.pid).ppid() == driver.pid
    _, done = driver.setup({"greeting": "Yo"})
    ok(done)
    _, result = driver.run("run", {"name": "Bo"})
    assert ok(result)["greeting"] == "Yo, Bo"


def test_setup_defaults_from_appsetup(ready):
    driver = ready("multi", {})
    _, result = driver.run("run", {"name": "Cy"})
    assert ok(result)["greeting"] == "Hello, Cy"  # AppSetup's default


def test_plain_app_without_sdk(ready):
    driver = ready("plain")
    _, result = driver.run("run", {"text": "quiet"})
    assert ok(result) == {"text": "QUIET", "setup_called": True}


@pytest.mark.parametrize(
    ("name", "config", "setup_received", "greeting", "setup_task_id"),
    [
        ("signatures_setup_none", {}, [], None, False),
        ("signatures_setup_config", {"greeting": "Hola"}, ["SetupConfig"], "Hola", False),
        ("signatures_setup_annotated", {}, ["AppSetup"], "Hi", False),
        ("signatures_setup_annotated", {"greeting": "Ahoy"}, ["AppSetup"], "Ahoy", False),
        ("signatures_setup_metadata", {}, ["Metadata"], None, True),
        ("signatures_setup_config_metadata", {}, ["AppSetup", "Metadata"], "Hey", True),
    ],
)
def test_setup_signature_variants(spawn, name, config, setup_received, greeting, setup_task_id):
    driver = spawn()
    driver.hello()
    ok(driver.load(app(name))[1])
    setup_id = driver.new_id("setup")
    ok(driver.request(Setup(id=setup_id, config=config))[1])
    _, result = driver.run("run", {"text": "x"})
    output = ok(result)
    assert output["setup_received"] == setup_received
    assert output["run_received"] == ["AppInput"]
    assert output["greeting"] == greeting
    assert output["task_id"] == (setup_id if setup_task_id else None)


def test_run_with_metadata_signature(ready):
    driver = ready("signatures_run_metadata")
    request = driver.start_run("run", {"log": "hello log", "progress": 0.25})
    events, result = driver.collect(request)[request]
    output = ok(result)
    assert output["run_received"] == ["AppInput", "Metadata"]
    assert output["task_id"] == request
    logs = [e for e in events if isinstance(e, Log)]
    assert [(log.stream, log.message) for log in logs] == [("log", "hello log")]
    progress = [e for e in events if isinstance(e, Progress)]
    assert len(progress) == 1
    assert progress[0].fraction == 0.25
    assert progress[0].message == "working"


def test_files_app_local_path_and_data_uri(ready, tmp_path):
    driver = ready("files", env=dict(os.environ, FILE_CACHE_DIR=str(tmp_path / "cache")))
    source = tmp_path / "input.bin"
    source.write_bytes(b"0123456789")

    _, result = driver.run("run", {"image": str(source)})
    output = ok(result)
    produced = Path(output["result"]["path"])
    assert produced.is_absolute()
    assert produced.is_file()
    assert produced.read_bytes() == b"9876543210"
    assert output["result"]["size"] == 10
    assert output["input_size"] == 10
    assert output["input_path"] == str(source)

    payload = b"hello from a data uri"
    uri = "data:text/plain;base64," + base64.b64encode(payload).decode()
    _, result = driver.run("run", {"image": uri})
    output = ok(result)
    produced = Path(output["result"]["path"])
    assert produced.is_absolute()
    assert produced.read_bytes() == payload[::-1]
    assert output["result"]["size"] == len(payload)
    assert output["input_size"] == len(payload)
    assert output["input_content_type"] == "text/plain"
    assert Path(output["input_path"]).is_relative_to(tmp_path / "cache")


@pytest.mark.timeout(120)
def test_hundred_mib_output_arrives_intact(ready):
    driver = ready("child_big")
    size = 100 * 1024 * 1024
    _, result = driver.run("blob", {"size": size, "seed": 7}, timeout=90)
    output = ok(result)
    data = output["data"]
    assert type(data) is bytes  # msgpack bin, not base64 text nor a list of ints
    assert len(data) == output["size"] == size
    digest = hashlib.sha256(data).hexdigest()
    assert digest == output["sha256"]
    assert digest == hashlib.sha256(random.Random(7).randbytes(size)).hexdigest()
    assert driver.ping().seq >= 1  # the stream is still in step


@pytest.mark.timeout(120)
def test_big_input_spanning_several_frames(ready):
    driver = ready("child_big")
    data = random.Random(3).randbytes(40 * 1024 * 1024)  # frames are at most 16 MiB
    _, result = driver.run("digest", {"data": data}, timeout=90)
    assert ok(result) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# -- errors -------------------------------------------------------------------


def test_invalid_input_is_a_validation_error(ready):
    driver = ready("multi", {"greeting": "Hi"})
    _, result = driver.run("run", {})
    error = failed(result, ErrorType.VALIDATION).error
    assert [(e.loc, e.type) for e in error.errors] == [(("name",), "missing")]
    assert "name" in error.message

    _, result = driver.run("add", {"a": "not a number", "b": 1})
    error = failed(result, ErrorType.VALIDATION).error
    assert [e.loc for e in error.errors] == [("a",)]
    assert "a" in error.message

    _, result = driver.run("add", {"a": 1, "b": 2})  # the child is still fine
    assert ok(result)["sum"] == 3


def test_invalid_setup_config_is_a_validation_error(spawn):
    driver = spawn()
    driver.hello()
    ok(driver.load(app("child_lifecycle"))[1])
    _, done = driver.setup({"fail": "not a boolean"})
    error = failed(done, ErrorType.VALIDATION).error
    assert [e.loc for e in error.errors] == [("fail",)]
    ok(driver.setup({})[1])  # setup may be retried


def test_unknown_function(ready):
    driver = ready("multi")
    _, result = driver.run("nope", {})
    error = failed(result, ErrorType.UNKNOWN_FUNCTION).error
    assert "nope" in error.message
    assert "reverse" in error.message  # it lists what exists


def test_app_exception_carries_class_and_traceback(ready):
    driver = ready("child_lifecycle")
    _, result = driver.run("boom", {"message": "kaboom"})
    error = failed(result, ErrorType.APP_EXCEPTION).error
    assert error.exception == "ValueError"
    assert error.message == "boom: kaboom"
    assert error.traceback is not None
    assert "Traceback (most recent call last)" in error.traceback
    assert 'raise ValueError(f"boom: {input.message}")' in error.traceback
    assert "ValueError: boom: kaboom" in error.traceback


def test_generator_yielding_nothing_is_an_app_exception(ready):
    driver = ready("child_lifecycle")
    events, result = driver.run("nothing", {})
    error = failed(result, ErrorType.APP_EXCEPTION).error
    assert "nothing" in error.message
    assert not [e for e in events if isinstance(e, Partial)]


def test_setup_raising_is_setup_failed_and_can_be_retried(spawn):
    driver = spawn()
    driver.hello()
    ok(driver.load(app("child_lifecycle"))[1])
    _, done = driver.setup({"fail": True})
    error = failed(done, ErrorType.SETUP_FAILED).error
    assert error.exception == "RuntimeError"
    assert "setup refused" in error.message
    assert error.traceback and "RuntimeError: setup refused" in error.traceback
    ok(driver.setup({})[1])
    _, result = driver.run("sleep", {"seconds": 0})
    assert ok(result)["slept"] == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [("broken_import", "this app cannot be imported"), ("no_app_class", "no App class")],
)
def test_load_failure_via_load_request(child, name, expected):
    _, result = child.load(app(name))
    error = failed(result, ErrorType.LOAD_FAILED).error
    assert expected in error.message
    # the child is empty again and can load a good app
    ok(child.load(app("plain"))[1])
    ok(child.setup()[1])
    assert ok(child.run("run", {"text": "a"})[1])["text"] == "A"


def test_load_without_the_description(child):
    """What a restart sends: the app is loaded and serves, and no description comes back."""
    _, result = child.request(Load(id="L", app_dir=app("plain"), describe=False))
    assert ok(result) is None
    ok(child.setup()[1])
    assert ok(child.run("run", {"text": "a"})[1])["text"] == "A"


def test_load_of_a_missing_directory(child, tmp_path):
    _, result = child.load(str(tmp_path / "does-not-exist"))
    failed(result, ErrorType.LOAD_FAILED)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("broken_import", "this app cannot be imported"), ("no_app_class", "no App class")],
)
def test_load_failure_on_the_command_line_exits_78(spawn, name, expected):
    driver = spawn(app(name))
    messages = driver.receive_all()
    assert driver.wait() == 78
    assert messages[0].app is None  # hello
    error = messages[1]
    assert isinstance(error, Error)
    assert error.id is None
    assert error.error.type is ErrorType.LOAD_FAILED
    assert expected in error.error.message
    assert len(messages) == 2


# -- cancel and unload --------------------------------------------------------


def test_cancel_of_a_long_async_run(ready, tmp_path):
    driver = ready("child_lifecycle", {"marker_dir": str(tmp_path)})
    request = driver.start_run("sleep", {"seconds": 60})
    driver.ping()  # the run has started by the time the child answers
    driver.cancel(request)
    _, result = driver.collect(request, timeout=10)[request]
    failed(result, ErrorType.CANCELLED)
    assert (tmp_path / "on-cancel").exists()
    assert (tmp_path / "run-cancelled").exists()  # the coroutine really was interrupted
    # the child serves on
    assert ok(driver.run("sleep", {"seconds": 0})[1])["slept"] == 0


def test_cancel_of_a_sync_run_answers_cancelled(ready, tmp_path):
    driver = ready("child_lifecycle", {"marker_dir": str(tmp_path)})
    request = driver.start_run("sleep_sync", {"seconds": 1.0})
    driver.ping()
    driver.cancel(request)
    _, result = driver.collect(request, timeout=10)[request]
    failed(result, ErrorType.CANCELLED)
    assert (tmp_path / "on-cancel").exists()


def test_cancel_of_an_unknown_request_is_ignored(ready):
    driver = ready("multi")
    driver.cancel("no-such-request")
    before = len(driver.received)
    driver.ping()
    assert len(driver.received) == before + 1  # only the pong came back


def test_unload_runs_the_hook_and_exits_0(ready, tmp_path):
    driver = ready("child_lifecycle", {"marker_dir": str(tmp_path)})
    ok(driver.run("sleep", {"seconds": 0})[1])
    assert not (tmp_path / "unloaded").exists()
    driver.unload()
    assert driver.wait() == 0
    assert (tmp_path / "unloaded").exists()


def test_a_running_setup_can_be_cancelled(child):
    ok(child.load(app("child_lifecycle"))[1])
    request = Setup(id="slow-setup", config={"setup_seconds": 0.5})
    child.send(request)
    child.cancel(request.id)
    _, terminal = child.collect(request.id, timeout=10)[request.id]
    failed(terminal, ErrorType.CANCELLED)
    # The state went back to loaded: setup may be tried again.
    ok(child.setup({})[1])


def test_pings_are_answered_while_unloading(ready, tmp_path):
    driver = ready("child_lifecycle", {"marker_dir": str(tmp_path), "unload_seconds": 1.0})
    driver.send(Unload())
    pong = driver.ping(timeout=0.5)  # long before the 1 s unload hook is done
    assert pong.seq >= 1
    assert not (tmp_path / "unloaded").exists()
    assert isinstance(driver.receive(timeout=10), Unloaded)
    assert driver.wait() == 0
    assert (tmp_path / "unloaded").exists()


def test_unload_cancels_open_runs_first(ready, tmp_path):
    driver = ready("child_lifecycle", {"marker_dir": str(tmp_path)})
    request = driver.start_run("sleep", {"seconds": 60})
    driver.ping()
    before = driver.unload(timeout=10)
    terminals = [m for m in before if isinstance(m, (Result, Error))]
    assert len(terminals) == 1
    failed(terminals[0], ErrorType.CANCELLED)
    assert terminals[0].id == request
    assert driver.wait() == 0
    assert (tmp_path / "run-cancelled").exists()
    assert (tmp_path / "unloaded").exists()
