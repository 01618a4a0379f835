"""The child under abuse: broken input, a vanishing supervisor, shutdown mid-work.

Every wait has a deadline, so a child that hangs fails the test instead of
hanging it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import psutil
import pytest

from protocol import Error, ErrorType, Hello, Ping, Pong, Result, Run, encode, encode_frames

REPO_ROOT = Path(__file__).resolve().parents[2]
APPS = REPO_ROOT / "tests" / "apps"


def app(name: str) -> str:
    return str(APPS / name)


def assert_protocol_error_and_exit_76(driver) -> Error:
    messages = driver.receive_all(timeout=10)
    assert driver.wait(10) == 76
    assert len(messages) == 1, messages
    error = messages[0]
    assert isinstance(error, Error)
    assert error.id is None
    assert error.error.type is ErrorType.PROTOCOL
    return error


@pytest.mark.parametrize(
    ("garbage", "expected"),
    [
        pytest.param(b"\x00\x00\x00\x03abc", "msgpack", id="framed-not-msgpack"),
        pytest.param(b"\x00\x00\x00\x01\x01", "map", id="framed-not-a-map"),
        pytest.param(b"this is not the protocol at all\n", "exceeds", id="text"),
        pytest.param(b"\x00\x00\x00", "end of file", id="torn-header"),
        pytest.param(random.Random(76).randbytes(4096), None, id="random"),
    ],
)
def test_garbage_on_stdin_is_a_protocol_error(child, garbage, expected):
    child.write_raw(garbage)
    child.close_stdin()  # whatever the garbage announced, no more bytes will come
    error = assert_protocol_error_and_exit_76(child)
    if expected is not None:
        assert expected in error.error.message


def test_oversize_frame_header_is_a_protocol_error(child):
    child.write_raw(b"\x7f\xff\xff\xff")  # a 2 GiB frame is announced; nothing follows
    error = assert_protocol_error_and_exit_76(child)
    assert "exceeds" in error.error.message


def test_unknown_message_type_is_a_protocol_error(child):
    for frame in encode_frames(msgpack.packb({"type": "pang", "seq": 1})):
        child.write_raw(frame)
    error = assert_protocol_error_and_exit_76(child)
    assert "pang" in error.error.message


def test_message_out_of_state_is_a_protocol_error(child):
    # a run before any app is loaded, bypassing our own state machine
    for frame in encode_frames(encode(Run(id="r1", function="run", input={}))):
        child.write_raw(frame)
    error = assert_protocol_error_and_exit_76(child)
    assert "run" in error.error.message


def test_protocol_error_while_a_run_is_in_progress(ready):
    driver = ready("child_lifecycle")
    driver.start_run("sleep_sync", {"seconds": 120})
    driver.ping()
    driver.write_raw(b"\xff\xff\xff\xff")
    # It exits at once, not after the 120 s of work.
    messages = driver.receive_all(timeout=30)
    assert driver.wait(30) == 76
    assert [m.error.type for m in messages if isinstance(m, Error)] == [ErrorType.PROTOCOL]


def test_end_of_file_on_stdin_exits_0(child):
    child.close_stdin()
    assert child.receive_all(timeout=10) == []
    assert child.wait(5) == 0


def test_end_of_file_inside_a_message_exits_76(child):
    child.write_raw(b"\x00\x00\x00\x10\x82")  # 16 bytes announced, 1 sent
    child.close_stdin()
    assert_protocol_error_and_exit_76(child)


def test_shutdown_exits_promptly(ready):
    driver = ready("multi")
    driver.shutdown()
    assert driver.receive_all(timeout=10) == []
    assert driver.wait(5) == 0


@pytest.mark.parametrize("function", ["sleep", "sleep_sync"])
def test_shutdown_does_not_wait_for_running_work(ready, function):
    driver = ready("child_lifecycle")
    driver.start_run(function, {"seconds": 120})
    driver.ping()
    driver.shutdown()
    assert driver.wait(30) == 0  # not after the 120 s of work


@pytest.mark.parametrize("function", ["sleep", "sleep_sync"])
def test_end_of_file_does_not_wait_for_running_work(ready, function):
    driver = ready("child_lifecycle")
    driver.start_run(function, {"seconds": 120})
    driver.ping()
    driver.close_stdin()
    assert driver.wait(30) == 0  # not after the 120 s of work


def test_ping_before_load(child):
    pong = child.ping()
    assert isinstance(pong, Pong)


def test_ping_before_hello_is_answered_after_hello(spawn):
    driver = spawn()
    driver.send(Ping(seq=41))  # before the hello has even been read
    assert isinstance(driver.receive(), Hello)
    pong = driver.receive()
    assert isinstance(pong, Pong)
    assert pong.seq == 41


def test_pings_are_answered_while_a_sync_run_works(ready):
    driver = ready("child_lifecycle")
    request = driver.start_run("sleep_sync", {"seconds": 1.0})
    pongs = [driver.ping(timeout=5) for _ in range(3)]
    _, result = driver.collect(request)[request]
    assert isinstance(result, Result), result
    received = driver.received
    assert max(received.index(p) for p in pongs) < received.index(result)


def test_wrong_parent_pid_exits_at_once(spawn):
    env = dict(os.environ, SUPERVISOR_PARENT_PID=str(os.getpid() + 10**6))
    driver = spawn(env=env)
    assert driver.receive_all(timeout=10) == []  # no hello
    assert driver.wait(10) == 1


INTERMEDIATE = textwrap.dedent(
    """
    import os, subprocess, sys, time
    env = dict(os.environ, SUPERVISOR_PARENT_PID=str(os.getpid()))
    child = subprocess.Popen(
        [sys.executable, "-m", "child"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )
    child.stdout.read(4)  # the hello's header: the child is serving
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_child_dies_with_its_parent():
    intermediate = subprocess.Popen(
        [sys.executable, "-c", INTERMEDIATE],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    child_pid = None
    try:
        assert intermediate.stdout is not None
        line = intermediate.stdout.readline()
        child_pid = int(line)
        child = psutil.Process(child_pid)
        assert child.ppid() == intermediate.pid
        assert not _gone(child_pid)

        intermediate.send_signal(signal.SIGKILL)
        intermediate.wait(10)

        deadline = time.monotonic() + 10
        while not _gone(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child_pid), "the child outlived its parent"
    finally:
        if intermediate.poll() is None:
            intermediate.kill()
            intermediate.wait(10)
        if child_pid is not None and not _gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        if intermediate.stdout is not None:
            intermediate.stdout.close()


def test_a_closed_stdout_ends_the_child_with_status_70():
    """Nobody reads the answers any more: the child exits with EX_SOFTWARE, never hangs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.read1(4096)  # the hello: the child is serving
        proc.stdout.close()
        proc.stdin.write(b"".join(encode_frames(encode(Ping(seq=1)))))
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 70
    finally:
        proc.kill()
        proc.communicate()  # reaps, and closes the pipes still open
