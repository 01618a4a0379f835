"""Shared helpers for the child's tests.

Makes the repository root importable when the project is not installed
(``pyproject.toml`` sets no ``pythonpath`` for pytest and these test directories
have no ``__init__.py``, so without an (editable) install ``import child`` would
fail under ``.venv/bin/pytest``), and provides ``ChildDriver``: a real
``python -m child`` process driven over the real protocol, for the
process-level acceptance tests (``test_child_*.py``).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import itertools
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
APPS_DIR = REPO_ROOT / "tests" / "apps"

if importlib.util.find_spec("child") is None:
    sys.path.insert(0, str(REPO_ROOT))

from protocol import (  # noqa: E402  (needs the path set above)
    Cancel,
    Connection,
    Error,
    Hello,
    Load,
    Message,
    Ping,
    Pong,
    Result,
    Run,
    Setup,
    Shutdown,
    Unload,
    Unloaded,
)
from protocol.streams import SyncChannel  # noqa: E402

DEFAULT_TIMEOUT = 30.0
"""Seconds any single wait on the child may take before the test fails."""
READ_SIZE = 256 * 1024


class ChildTimeout(AssertionError):
    """The child did not answer in time."""


def app_path(name: str) -> str:
    """The absolute path of ``tests/apps/<name>``."""
    return str(APPS_DIR / name)


class ChildDriver:
    """One real child process, spoken to through ``protocol.Connection("supervisor")``.

    A thread pumps the child's stdout (``read1``) into a queue so that the child
    never blocks on a full pipe and every wait here has a deadline; another
    collects its stderr (fd 2, the "fatal" channel) for diagnostics. The
    ``Connection`` itself is only touched from the test's thread, so every message
    the child sends is checked against the protocol's state machine: a child that
    corrupts the stream or breaks the protocol makes the test fail with
    ``RemoteProtocolError``.
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "child", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
        )
        self._start(proc, timeout)

    def _start(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Drive ``proc``, whose stdin, stdout and stderr are pipes (the protocol's
        two directions and the fatal channel); the Node.js tests start theirs apart."""
        self.timeout = timeout
        self.proc = proc
        self.connection = Connection("supervisor")
        self.channel = SyncChannel(self.connection, self._read, self._write)
        self.received: list[Message] = []
        """Every message received, in order."""
        self._backlog: collections.deque[Message] = collections.deque()
        self._chunks: queue.Queue[bytes] = queue.Queue()
        self._stderr = bytearray()
        self._deadline: float | None = None
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._threads = [
            threading.Thread(target=self._pump_stdout, name="child-stdout", daemon=True),
            threading.Thread(target=self._pump_stderr, name="child-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- byte level -----------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr_text(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                data = self.proc.stdout.read1(READ_SIZE)
            except (OSError, ValueError):
                data = b""
            self._chunks.put(data)
            if not data:
                return

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            try:
                data = self.proc.stderr.read1(READ_SIZE)
            except (OSError, ValueError):
                return
            if not data:
                return
            self._stderr += data

    def _read(self, size: int) -> bytes:
        remaining = None if self._deadline is None else self._deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                raise queue.Empty
            return self._chunks.get(timeout=remaining)
        except queue.Empty:
            raise ChildTimeout(
                f"the child sent nothing more in time; stderr:\n{self.stderr_text[-4000:]}"
            ) from None

    def _write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def write_raw(self, data: bytes) -> None:
        """Bytes straight onto the child's stdin, bypassing the protocol."""
        self._write(data)

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    # -- message level ----------------------------------------------------------

    def send(self, message: Message) -> None:
        self.channel.send(message)

    def receive(self, timeout: float | None = None) -> Message:
        """The next message not yet consumed; ``EOFError`` once the child closed its stdout.

        Messages that ``ping`` stepped over come first, in their order of arrival.
        """
        if self._backlog:
            return self._backlog.popleft()
        return self._receive_new(timeout)

    def _receive_new(self, timeout: float | None) -> Message:
        self._deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            message = self.channel.receive()
        finally:
            self._deadline = None
        self.received.append(message)
        return message

    def expect(self, cls: type[Message], timeout: float | None = None) -> Any:
        message = self.receive(timeout)
        assert isinstance(message, cls), f"expected {cls.__name__}, got {message!r}"
        return message

    def receive_all(self, timeout: float | None = None) -> list[Message]:
        """Every message until the child closes its stdout."""
        messages = []
        while True:
            try:
                messages.append(self.receive(timeout))
            except EOFError:
                return messages

    def new_id(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._ids)}"

    def collect(
        self, *ids: str, timeout: float | None = None
    ) -> dict[str, tuple[list[Message], Result | Error]]:
        """Wait for the terminal messages of ``ids``.

        Returns ``{id: (events, terminal)}``, where ``events`` are the messages
        carrying that id that arrived before its terminal message. Messages for
        other ids (or none) are only kept in ``received``.
        """
        events: dict[str, list[Message]] = {i: [] for i in ids}
        done: dict[str, Result | Error] = {}
        while len(done) < len(ids):
            message = self.receive(timeout)
            request = getattr(message, "id", None)
            if request not in events:
                continue
            assert request not in done, f"{message!r} after the terminal message of {request}"
            if isinstance(message, (Result, Error)):
                done[request] = message
            else:
                events[request].append(message)
        return {i: (events[i], done[i]) for i in ids}

    def request(
        self, message: Load | Setup | Run, timeout: float | None = None
    ) -> tuple[list[Message], Result | Error]:
        self.send(message)
        return self.collect(message.id, timeout=timeout)[message.id]

    # -- the protocol's operations ----------------------------------------------

    def hello(self, timeout: float | None = None) -> Hello:
        return self.expect(Hello, timeout)

    def load(
        self, app_dir: str, env: dict[str, str] | None = None, timeout: float | None = None
    ) -> tuple[list[Message], Result | Error]:
        return self.request(
            Load(id=self.new_id("load"), app_dir=app_dir, env=env or {}), timeout=timeout
        )

    def setup(
        self,
        config: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[list[Message], Result | Error]:
        return self.request(
            Setup(id=self.new_id("setup"), config=config or {}, metadata=metadata or {}),
            timeout=timeout,
        )

    def start_run(
        self,
        function: str,
        input: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        request = self.new_id("run")
        self.send(Run(id=request, function=function, input=input, metadata=metadata or {}))
        return request

    def run(
        self,
        function: str,
        input: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[list[Message], Result | Error]:
        request = self.start_run(function, input, metadata)
        return self.collect(request, timeout=timeout)[request]

    def cancel(self, request: str) -> None:
        self.send(Cancel(id=request))

    def ping(self, timeout: float | None = None) -> Pong:
        """Send a ping and wait for its pong; other messages stay to be received."""
        seq = next(self._seq)
        self.send(Ping(seq=seq))
        while True:
            message = self._receive_new(timeout)
            if isinstance(message, Pong) and message.seq == seq:
                return message
            self._backlog.append(message)

    def unload(self, timeout: float | None = None) -> list[Message]:
        """Send ``unload``; return the messages that came before ``unloaded``."""
        self.send(Unload())
        before = []
        while not isinstance(message := self.receive(timeout), Unloaded):
            before.append(message)
        return before

    def shutdown(self) -> None:
        self.send(Shutdown())

    # -- process level ----------------------------------------------------------

    def wait(self, timeout: float = 10.0) -> int:
        """The exit status; fails the test when the child is still alive after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ChildTimeout(
                f"the child did not exit within {timeout} s; stderr:\n{self.stderr_text[-4000:]}"
            ) from None

    def stderr_at_exit(self, timeout: float = 10.0) -> str:
        """Everything the child wrote to its real stderr, once it has exited."""
        self.wait(timeout)
        self._threads[1].join(timeout)
        return self.stderr_text

    def close(self) -> None:
        """Kill the child (if alive) and reap it; never leaves a zombie behind."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        for thread in self._threads:  # they end at the end of file of the dead child
            thread.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                assert stream is not None
                stream.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., ChildDriver]]:
    """``spawn(*args, env=None)`` starts ``python -m child *args``; all are killed at teardown."""
    drivers: list[ChildDriver] = []

    def start(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> ChildDriver:
        driver = ChildDriver(*args, env=env, **kwargs)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.close()


@pytest.fixture
def child(spawn: Callable[..., ChildDriver]) -> ChildDriver:
    """An empty child whose hello has been received."""
    driver = spawn()
    hello = driver.hello()
    assert hello.app is None
    return driver


@pytest.fixture
def ready(spawn: Callable[..., ChildDriver]) -> Callable[..., ChildDriver]:
    """``ready(app, config=None, env=None)``: a child with ``tests/apps/<app>`` loaded and
    set up."""

    def start(
        app: str, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> ChildDriver:
        driver = spawn()
        assert driver.hello().app is None
        _, loaded = driver.load(app_path(app), env=env)
        assert isinstance(loaded, Result), loaded
        _, done = driver.setup(config)
        assert isinstance(done, Result), done
        return driver

    return start
