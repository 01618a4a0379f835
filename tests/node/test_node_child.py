"""The JavaScript child speaks PROTOCOL.md: every message it sends passes the
reference ``Connection("supervisor")``, and each behaviour below is the one the
document asks of a child (section numbers in the docstrings)."""

from __future__ import annotations

import os
import shutil
import signal
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from node_helpers import APPS, NodeChildDriver, SpawnNode, wait_until

from protocol import Error, Hello, Log, Partial, Progress, Result
from supervisor.environments import node_runtime

KITCHEN = str(APPS / "node_kitchen")


def ready(spawn_node: SpawnNode, config: dict[str, Any] | None = None) -> NodeChildDriver:
    driver = spawn_node()
    assert driver.hello().app is None
    _, loaded = driver.load(KITCHEN)
    assert isinstance(loaded, Result), loaded
    _, done = driver.setup(config or {})
    assert isinstance(done, Result), done
    return driver


def test_hello_describes_the_app_it_was_started_with(spawn_node: SpawnNode) -> None:
    driver = spawn_node(KITCHEN)
    hello = driver.hello()
    assert isinstance(hello, Hello) and hello.protocol_version == 1
    assert hello.pid == driver.pid and hello.shared_memory is False
    assert hello.app is not None and hello.app["name"] == "kitchen"
    functions = hello.app["functions"]
    assert set(functions) == {
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
    assert functions["count"]["streaming"] is True and functions["run"]["streaming"] is False
    assert hello.app["setup_schema"]["properties"]["greeting"]["default"] == "Hello"


def test_output_while_importing_comes_after_hello(
    spawn_node: SpawnNode, tmp_path: Path, kitchen_env: dict[str, str]
) -> None:
    """Section 10.1: hello is the first message, even when the app prints as it is
    imported (at the JavaScript level and on fd 1); its output follows as logs."""
    shutil.copy(APPS / "node_kitchen" / "inference.js", tmp_path / "kitchen.js")
    (tmp_path / "inference.js").write_text(
        'import fs from "node:fs";\n'
        'console.log("importing");\n'
        'fs.writeSync(1, "importing, on fd 1\\n");\n'
        'export * from "./kitchen.js";\n'
    )
    (tmp_path / "package.json").write_text('{"type": "module"}')
    packages = Path(kitchen_env["APPVISOR_NODE_PACKAGE_DIR"])
    (tmp_path / "node_modules").symlink_to(packages / "node_modules")
    driver = spawn_node(str(tmp_path))
    hello = driver.hello()
    assert hello.app is not None
    logs = {driver.expect(Log).message, driver.expect(Log).message}
    assert logs == {"importing", "importing, on fd 1"}


def test_ping_before_hello_is_answered_after_it(spawn_node: SpawnNode) -> None:
    """Section 10.5: a ping sent before hello is answered after hello."""
    driver = spawn_node()
    driver.ping()
    assert isinstance(driver.received[0], Hello)


def test_load_setup_run_and_the_request_logs(spawn_node: SpawnNode) -> None:
    driver = spawn_node()
    driver.hello()
    events, loaded = driver.load(KITCHEN)
    assert isinstance(loaded, Result) and set(loaded.output["functions"]) >= {"run", "reverse"}
    events, done = driver.setup({"greeting": "Hi"})
    assert isinstance(done, Result) and done.output is None
    assert [(e.stream, e.message) for e in events if isinstance(e, Log)] == [
        ("stdout", "setup with Hi")
    ]
    events, result = driver.run("run", {"name": "Ada"})
    assert isinstance(result, Result), result
    assert result.output["greeting"] == "Hi, Ada!"
    file = result.output["file"]
    assert set(file) == {"path", "content_type", "size", "filename"}
    assert Path(file["path"]).read_text() == "Hi, Ada!" and file["size"] == 8
    assert next(e for e in events if isinstance(e, Progress)).fraction == 0.5


def test_output_written_any_way_is_a_log_of_its_request(spawn_node: SpawnNode) -> None:
    """Section 2: console.log, process.stdout.write, fd 1 and a subprocess's output
    all become logs of the request, before its result; the stream stays intact."""
    driver = ready(spawn_node)
    events, result = driver.run("noisy", {"text": "x"})
    assert isinstance(result, Result), result
    logs = {(e.stream, e.message) for e in events if isinstance(e, Log)}
    assert logs == {
        ("stdout", "console.log: x"),
        ("stderr", "console.error: x"),
        ("stdout", "stdout.write: x"),
        ("stdout", "fd 1: x"),
        ("stdout", "subprocess: x"),
        ("stderr", "subprocess stderr: x"),
    }


def test_concurrent_requests_each_get_their_own_output(spawn_node: SpawnNode) -> None:
    """Two runs interleaving their console.log lines across awaits: each line is a
    log of the request whose code printed it."""
    driver = ready(spawn_node)
    first = driver.start_run("chatter", {"tag": "a", "n": 20})
    second = driver.start_run("chatter", {"tag": "b", "n": 20})
    done = driver.collect(first, second)
    for request, tag in ((first, "a"), (second, "b")):
        events, result = done[request]
        assert isinstance(result, Result), result
        lines = [e.message for e in events if isinstance(e, Log)]
        assert lines == [f"{tag} {i}" for i in range(20)]


def test_streaming_function_sends_partials_then_the_last_as_result(spawn_node: SpawnNode) -> None:
    driver = ready(spawn_node)
    events, result = driver.run("count", {"n": 3})
    assert [e.output for e in events if isinstance(e, Partial)] == [{"i": 1}, {"i": 2}, {"i": 3}]
    assert isinstance(result, Result) and result.output == {"i": 3}


def test_structured_errors(spawn_node: SpawnNode) -> None:
    driver = ready(spawn_node)
    _, unknown = driver.run("nope", {})
    assert isinstance(unknown, Error) and unknown.error.type.value == "unknown_function"
    _, invalid = driver.run("reverse", {"text": 5})
    assert isinstance(invalid, Error) and invalid.error.type.value == "validation"
    assert [(e.loc, e.type) for e in invalid.error.errors] == [(("text",), "invalid_type")]
    _, raised = driver.run("crash", {"how": "reject"})
    assert isinstance(raised, Error) and raised.error.type.value == "app_exception"
    assert raised.error.exception == "TypeError"
    assert "the app failed on purpose" in raised.error.message
    assert raised.error.traceback is not None and "inference.js" in raised.error.traceback


def test_setup_config_is_validated_and_setup_may_be_retried(spawn_node: SpawnNode) -> None:
    driver = spawn_node(KITCHEN)
    driver.hello()
    _, refused = driver.setup({"greeting": 3})
    assert isinstance(refused, Error) and refused.error.type.value == "validation"
    assert refused.error.errors[0].loc == ("greeting",)
    _, done = driver.setup({"greeting": "Yo"})
    assert isinstance(done, Result)
    _, result = driver.run("reverse", {"text": "ok"})
    assert isinstance(result, Result)


def test_messages_larger_than_a_frame_cross_both_ways(spawn_node: SpawnNode) -> None:
    """Section 3: 17 MiB each way, split into 16 MiB frames by both senders."""
    driver = ready(spawn_node)
    text = "ab" * (17 * 2**19)
    _, result = driver.run("reverse", {"text": text})
    assert isinstance(result, Result) and result.output["text"] == text[::-1]


def test_pings_are_answered_while_app_code_spins(spawn_node: SpawnNode, tmp_path: Path) -> None:
    """Section 10.5: the I/O runs on a worker thread that a CPU-bound loop cannot block."""
    driver = ready(spawn_node)
    started, gate = tmp_path / "started", tmp_path / "gate"
    request = driver.start_run("spin", {"started": str(started), "gate": str(gate)})
    wait_until(started.exists)
    driver.ping()  # answered while the loop spins: it only ends once the gate exists
    gate.touch()
    (_, result) = driver.collect(request)[request]
    assert isinstance(result, Result) and result.output["spun"] > 0


def test_cancel_of_an_awaiting_request_answers_cancelled(spawn_node: SpawnNode) -> None:
    """Section 10.2: a streaming run between two awaits stops at once."""
    driver = ready(spawn_node)
    request = driver.start_run("count", {"n": 1000, "delay_ms": 50})
    while not isinstance(driver.receive(), Partial):  # the stream is under way
        pass
    driver.cancel(request)
    events, result = driver.collect(request)[request]
    assert isinstance(result, Error) and result.error.type.value == "cancelled"
    assert len([e for e in events if isinstance(e, Partial)]) < 999
    _, after = driver.run("reverse", {"text": "ab"})
    assert isinstance(after, Result) and after.output == {"text": "ba"}


def test_cancel_aborts_the_requests_signal(spawn_node: SpawnNode, tmp_path: Path) -> None:
    driver = ready(spawn_node)
    marker, started = tmp_path / "aborted", tmp_path / "started"
    request = driver.start_run("hold", {"marker": str(marker), "started": str(started)})
    wait_until(started.exists)
    assert not marker.exists()
    driver.cancel(request)
    _, result = driver.collect(request)[request]
    assert isinstance(result, Error) and result.error.type.value == "cancelled"
    wait_until(marker.exists)
    assert marker.read_text() == "aborted"


def test_unload_calls_the_hook_then_exits_0(spawn_node: SpawnNode, tmp_path: Path) -> None:
    marker = tmp_path / "unloaded"
    driver = ready(spawn_node, {"marker": str(marker)})
    driver.unload()
    assert driver.wait() == 0
    assert marker.read_text() == "unloaded"


def test_shutdown_and_end_of_file_exit_0(spawn_node: SpawnNode) -> None:
    first = ready(spawn_node)
    first.shutdown()
    assert first.wait() == 0
    second = ready(spawn_node)
    second.close_stdin()
    assert second.wait() == 0


def test_exit_when_the_parent_dies(spawn_node: SpawnNode, kitchen_env: dict[str, str]) -> None:
    """A child whose SUPERVISOR_PARENT_PID is not its parent leaves (the parent died)."""
    driver = spawn_node(env={**kitchen_env, "SUPERVISOR_PARENT_PID": "1"})
    driver.hello()
    assert driver.wait(timeout=10) == 0


def test_protocol_error_is_reported_then_exit_76(spawn_node: SpawnNode) -> None:
    driver = spawn_node()
    driver.hello()
    payload = b"\x82\xa4type\xa4pang\xa3seq\x01"
    driver.write_raw(struct.pack(">I", len(payload)) + payload)
    notice = driver.expect(Error)
    assert notice.id is None and notice.error.type.value == "protocol"
    assert "unknown message type 'pang'" in notice.error.message
    assert driver.wait() == 76


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (msgpack.packb({"type": "ping", "seq": True}), "ping.seq must be int, got bool"),
        (msgpack.packb({"type": "run", "id": "r"}), "run message lacks field 'function'"),
        (msgpack.packb({"type": "ping", "seq": 1, 7: 0}), "map keys must be str"),
        (msgpack.packb({"type": "pong", "seq": 1}), "pong may not be sent by the supervisor"),
        (msgpack.packb({"type": "setup", "id": "s"}), "setup is not allowed in state empty"),
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (b"\xc1", "invalid msgpack"),
    ],
)
def test_malformed_messages_are_protocol_errors(
    spawn_node: SpawnNode, payload: bytes, complaint: str
) -> None:
    """Sections 4 and 8: wrong types, missing fields, non-str keys, wrong direction
    or state and invalid msgpack each end the child with a nil-id protocol error."""
    driver = spawn_node()
    driver.hello()
    driver.write_raw(struct.pack(">I", len(payload)) + payload)
    notice = driver.expect(Error)
    assert notice.id is None and complaint in notice.error.message
    assert driver.wait() == 76


def test_oversized_frame_is_refused_at_its_header(spawn_node: SpawnNode) -> None:
    driver = spawn_node()
    driver.hello()
    driver.write_raw(struct.pack(">I", 16 * 2**20 + 1))
    notice = driver.expect(Error)
    assert "max_frame_size" in notice.error.message
    assert driver.wait() == 76


def test_an_app_that_cannot_load_exits_78(spawn_node: SpawnNode, tmp_path: Path) -> None:
    (tmp_path / "inference.js").write_text("export const RunInput = 1;\nexport class App {}\n")
    driver = spawn_node(str(tmp_path))
    assert driver.hello().app is None
    notice = driver.expect(Error)
    assert notice.id is None and notice.error.type.value == "load_failed"
    assert "no {Name}Input/{Name}Output" in notice.error.message
    assert driver.wait() == 78


def test_uncaught_exception_reaches_the_fatal_channel(spawn_node: SpawnNode) -> None:
    driver = ready(spawn_node)
    driver.start_run("crash", {"how": "throw"})
    stderr = driver.stderr_at_exit()
    assert driver.proc.returncode == 1
    assert "thrown outside any request" in stderr


def test_a_broken_runtime_says_why_on_the_fatal_channel(
    spawn_node: SpawnNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing reads fd 2 before the runtime is up: a runtime that cannot import its
    own modules reports it where the supervisor reads (its stderr tail), exit 70."""
    broken = tmp_path / "node"
    shutil.copytree(node_runtime.CHILD_SOURCE, broken, symlinks=True)
    (broken / "wire_values.js").write_text("export const toWire = ;\n")
    monkeypatch.setattr(node_runtime, "CHILD_SOURCE", broken)
    driver = spawn_node()
    with pytest.raises(EOFError):
        driver.hello()
    stderr = driver.stderr_at_exit()
    assert driver.proc.returncode == 70
    assert "cannot start" in stderr and "SyntaxError" in stderr


def test_subprocesses_inherit_no_protocol_descriptor(spawn_node: SpawnNode) -> None:
    """The runtime's descriptors are close-on-exec: a subprocess gets only what its
    spawn passes (0, 1 and 2), never a protocol pipe that would keep it open."""
    driver = ready(spawn_node)
    child_fds = sorted(int(fd) for fd in os.listdir(f"/proc/{driver.pid}/fd"))
    assert len(child_fds) > 3
    flags = {}
    for fd in child_fds:
        with open(f"/proc/{driver.pid}/fdinfo/{fd}") as info:
            flags[fd] = int(info.read().split("flags:")[1].split()[0], 8)
    inherited = [fd for fd, f in flags.items() if fd > 2 and not f & 0o2000000]
    assert inherited == [], inherited
    # and stdin, which a subprocess with stdio "inherit" gets, no longer carries frames
    assert os.readlink(f"/proc/{driver.pid}/fd/0") == "/dev/null"
    os.kill(driver.pid, signal.SIGKILL)
