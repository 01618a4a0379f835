"""Mechanism for one child process: start it, signal it, kill it in stages, reap it.

No policy lives here (when to restart, whom to evict): this module only does
what it is told, reliably. The child runs in its own session, so its process
group holds it and whatever it spawned; termination signals the group, then
SIGKILLs the group and any descendant that left it. Waiting is shielded from
cancellation, so a child is always reaped and never left a zombie.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc
import psutil

logger = logging.getLogger("supervisor.process")
STDERR_TAIL_LINES = 50


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended: exactly one of ``code`` and ``signal`` is set."""

    code: int | None
    signal: int | None
    oom_killed: bool = False

    @classmethod
    def from_returncode(cls, returncode: int, oom_killed: bool = False) -> ExitStatus:
        if returncode < 0:
            return cls(code=None, signal=-returncode, oom_killed=oom_killed)
        return cls(code=returncode, signal=None)

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    def describe(self) -> str:
        if self.signal is None:
            return f"exited with code {self.code}"
        text = f"was killed by {self.signal_name}"
        if self.oom_killed:
            text += " (the kernel's OOM killer)"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "exit_code": self.code,
            "signal": self.signal_name,
            "oom_killed": self.oom_killed,
        }


def oom_kill_count() -> int:
    """The kernel's count of OOM kills, or -1 where it cannot be read."""
    try:
        with open("/proc/vmstat") as vmstat:
            for line in vmstat:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class ChildProcess:
    """A running child. Create with :meth:`spawn`."""

    def __init__(
        self,
        process: anyio.abc.Process,
        name: str,
        protocol_fds: tuple[int, int] | None = None,
        stderr_fd: int | None = None,
    ) -> None:
        self._process = process
        self.name = name
        self.pid = process.pid
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._oom_kills_at_start = oom_kill_count()
        self._signalled = False
        self._descendants_seen: dict[int, psutil.Process] = {}
        self._status: ExitStatus | None = None
        self._protocol_fds = protocol_fds
        self._stderr_fd = stderr_fd
        """Our end of the child's stderr pipe, until ``read_stderr`` takes it. Our own
        pipe rather than one asyncio makes: the process transport then holds no pipe,
        and closes itself when the child is reaped, even if a grandchild keeps the
        child's stderr open after the event loop has ended."""

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        name: str,
        pass_fds: Sequence[int] = (),
    ) -> ChildProcess:
        """Start ``argv`` with its stdin and stdout on two new pipes, whose other
        ends the caller takes with :meth:`take_protocol_fds`."""
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        try:
            # Shielded: cancelled half-way, the process would be started but never
            # awaited (asyncio kills it, then its wait is cancelled too). Whole, it
            # is the caller's, who stops it when the cancellation lands.
            with anyio.CancelScope(shield=True):
                process = await anyio.open_process(
                    list(argv),
                    stdin=to_child_read,
                    stdout=from_child_write,
                    stderr=stderr_write,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                    pass_fds=pass_fds,
                )
        except BaseException:
            for fd in (to_child_write, from_child_read, stderr_read):
                os.close(fd)
            raise
        finally:
            for fd in (to_child_read, from_child_write, stderr_write):
                os.close(fd)
        logger.debug("%s: spawned pid %d", name, process.pid)
        return cls(process, name, (from_child_read, to_child_write), stderr_read)

    @classmethod
    async def spawn_with_captured_stdio(
        cls,
        argv_for: Callable[[int, int, int, int], Sequence[str]],
        *,
        env: Mapping[str, str],
        cwd: str,
        name: str,
    ) -> ChildProcess:
        """Start a child that cannot move its own descriptors (node): the protocol
        arrives on its stdin and leaves on an extra descriptor, fds 1 and 2 are the
        write ends of two capture pipes whose read ends it also gets, and a fourth
        descriptor is our stderr pipe. ``argv_for(protocol_out, capture_stdout,
        capture_stderr, stderr)`` builds the command line from those numbers."""
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        capture_out_read, capture_out_write = os.pipe()
        capture_err_read, capture_err_write = os.pipe()
        theirs = (
            to_child_read,
            from_child_write,
            stderr_write,
            capture_out_read,
            capture_out_write,
            capture_err_read,
            capture_err_write,
        )
        try:
            argv = argv_for(from_child_write, capture_out_read, capture_err_read, stderr_write)
            with anyio.CancelScope(shield=True):
                process = await anyio.open_process(
                    list(argv),
                    stdin=to_child_read,
                    stdout=capture_out_write,
                    stderr=capture_err_write,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                    pass_fds=(from_child_write, capture_out_read, capture_err_read, stderr_write),
                )
        except BaseException:
            for fd in (to_child_write, from_child_read, stderr_read):
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        logger.debug("%s: spawned pid %d", name, process.pid)
        return cls(process, name, (from_child_read, to_child_write), stderr_read)

    def take_protocol_fds(self) -> tuple[int, int]:
        """The supervisor's ends of the protocol pipes (read from the child, write
        to it); the taker closes them."""
        if self._protocol_fds is None:
            raise RuntimeError(f"{self.name}: the protocol pipes were already taken")
        fds, self._protocol_fds = self._protocol_fds, None
        return fds

    @property
    def exit_status(self) -> ExitStatus | None:
        return self._status

    async def read_stderr(self) -> None:
        """Collect what the child writes to its original stderr (start-up errors,
        fatal reports) until it closes or this task is cancelled, then close our end;
        the last lines are kept for error reports."""
        fd, self._stderr_fd = self._stderr_fd, None
        if fd is None:
            return
        os.set_blocking(fd, False)
        pending = b""
        try:
            while True:
                await anyio.wait_readable(fd)
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    self.stderr_tail.append(text)
                    logger.warning("%s stderr: %s", self.name, text)
        finally:
            os.close(fd)
        if pending:
            self.stderr_tail.append(pending.decode("utf-8", "replace"))

    async def wait(self) -> ExitStatus:
        """Wait for the child to exit and reap it. Not cancellable: never leaves a zombie."""
        if self._status is None:
            with anyio.CancelScope(shield=True):
                returncode = await self._process.wait()
            oom = (
                returncode == -signal.SIGKILL
                and not self._signalled
                and self._oom_kills_at_start >= 0
                and oom_kill_count() > self._oom_kills_at_start
            )
            self._status = ExitStatus.from_returncode(returncode, oom_killed=oom)
            logger.debug("%s: pid %d %s", self.name, self.pid, self._status.describe())
        return self._status

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's process group and to descendants that left it."""
        self._signalled = True
        self._descendants_seen.update((p.pid, p) for p in self._descendants())
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        for proc in self._descendants_seen.values():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)

    async def terminate(self, grace: float) -> ExitStatus:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL; always reaps."""
        if self._status is None and self._process.returncode is None:
            logger.info("%s: sending SIGTERM to pid %d", self.name, self.pid)
            self.signal_group(signal.SIGTERM)
            with anyio.move_on_after(grace, shield=True):
                await self._process.wait()
            if self._process.returncode is not None:
                return await self._finish()
            logger.warning(
                "%s: pid %d ignored SIGTERM for %.1f s; SIGKILL", self.name, self.pid, grace
            )
        self.kill()
        return await self._finish()

    async def _finish(self) -> ExitStatus:
        status = await self.wait()
        # Grandchildren may outlive the child; the group signal reaches them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return status

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def close_pipes(self) -> None:
        """Close the pipe ends nobody took (the channel and ``read_stderr`` close theirs)."""
        if self._protocol_fds is not None:
            for fd in self._protocol_fds:
                os.close(fd)
            self._protocol_fds = None
        if self._stderr_fd is not None:
            os.close(self._stderr_fd)
            self._stderr_fd = None
