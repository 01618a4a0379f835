"""Mechanism for one child process: start it, signal it, kill it in stages, reap it.

No policy lives here (when to restart, whom to evict): this module only does
what it is told, reliably. The child runs in its own session, so its process
group holds it and whatever it spawned; termination signals the group, then
SIGKILLs the group and any descendant that left it. The process spawned is the
child's reaper (``child.reaper``), whose tree keeps even the processes that
detached; where the host allows, the child also has its own cgroup
(``confinement``), which is killed whole and removed once the child is reaped.
Waiting is shielded from cancellation, so a child is always reaped and never
left a zombie.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc
import anyio.to_thread
import psutil

from .cgroups import ChildCgroup
from .confinement import Confinement
from .process_memory import tree_pids

logger = logging.getLogger("supervisor.process")
STDERR_TAIL_LINES = 50


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended: exactly one of ``code`` and ``signal`` is set."""

    code: int | None
    signal: int | None
    oom_killed: bool = False
    memory_limit: int | None = None
    """The hard RAM limit (the child's cgroup) that the OOM killer enforced, if so."""

    @classmethod
    def from_returncode(
        cls, returncode: int, oom_killed: bool = False, memory_limit: int | None = None
    ) -> ExitStatus:
        if returncode < 0:
            return cls(
                code=None,
                signal=-returncode,
                oom_killed=oom_killed,
                memory_limit=memory_limit if oom_killed else None,
            )
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
            text += " (the kernel's OOM killer"
            if self.memory_limit is not None:
                text += f", at its hard RAM limit of {self.memory_limit} bytes"
            text += ")"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "exit_code": self.code,
            "signal": self.signal_name,
            "oom_killed": self.oom_killed,
            **({"memory_limit": self.memory_limit} if self.memory_limit is not None else {}),
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


class ExternalProcess(anyio.abc.Process):
    """A process the event loop did not start (forked by a zygote, or spawned before
    the loop ran), signalled by pid; a subclass says how it is waited for."""

    def __init__(self, pid: int) -> None:
        self._pid = pid

    @property
    def pid(self) -> int:
        return self._pid

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        await self.wait()

    @property
    def stdin(self) -> None:
        return None

    @property
    def stdout(self) -> None:
        return None

    @property
    def stderr(self) -> None:
        return None


class AdoptedProcess(ExternalProcess):
    """A process spawned before the event loop ran (``head_start``), waited for
    through its pidfd: the loop's own child watcher does not know it."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        super().__init__(popen.pid)
        self._popen = popen
        self._pidfd: int | None = None
        self._watching: anyio.Event | None = None
        """Set when the task that watches the pidfd has news (one may watch it)."""
        with contextlib.suppress(AttributeError, OSError):  # pidfds: Linux 5.3
            self._pidfd = os.pidfd_open(popen.pid)

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        while (returncode := self._popen.poll()) is None:
            if self._watching is not None:  # another task watches: wait for its news
                await self._watching.wait()
                continue
            self._watching = anyio.Event()
            try:
                if self._pidfd is not None:
                    await anyio.wait_readable(self._pidfd)
                else:
                    await anyio.sleep(0.05)
            finally:
                watching, self._watching = self._watching, None
                watching.set()
        if self._pidfd is not None and self._watching is None:
            # Never while another task's wait is registered on it: the loop would
            # keep a watcher for the number, which the next pipe may get.
            os.close(self._pidfd)
            self._pidfd = None
        return returncode


class ChildProcess:
    """A running child. Create with :meth:`spawn`."""

    def __init__(
        self,
        process: anyio.abc.Process,
        name: str,
        protocol_fds: tuple[int, int] | None = None,
        stderr_fd: int | None = None,
        cgroup: ChildCgroup | None = None,
    ) -> None:
        self._process = process
        self.cgroup = cgroup
        """The child's own cgroup, where the host allows them (``confinement``)."""
        self.name = name
        self.pid = process.pid
        """The process spawned: the reaper of the app's processes (``child.reaper``), whose
        group and tree hold them all; signals and memory figures start here."""
        self.app_pid = process.pid
        """The process that runs the app (its ``hello`` says which), for reports."""
        self.start = "spawn"
        """How it was started: ``spawn``, ``pool`` (pre-started) or ``fork`` (``fork_server``)."""
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.mask: Callable[[str], str] | None = None
        """Hides secret values in what the child writes to stderr, before it is kept."""
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
        confinement: Confinement | None = None,
    ) -> ChildProcess:
        """Start ``argv`` with its stdin and stdout on two new pipes, whose other
        ends the caller takes with :meth:`take_protocol_fds`; ``confinement`` gives
        it a cgroup (it waits to be moved there) and its user."""
        cgroup = confinement.new_cgroup(name) if confinement else None
        if confinement is not None:
            argv, env = confinement.command(argv), confinement.environment(env, cgroup)
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
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            for fd in (to_child_read, from_child_write, stderr_write):
                os.close(fd)
        logger.debug("%s: spawned pid %d", name, process.pid)
        child = cls(process, name, (from_child_read, to_child_write), stderr_read, cgroup)
        await child.enter_cgroup()
        return child

    @classmethod
    async def adopt(
        cls,
        popen: subprocess.Popen[bytes],
        name: str,
        protocol_fds: tuple[int, int],
        stderr_fd: int,
        confinement: Confinement | None = None,
    ) -> ChildProcess:
        """Take over a child spawned before the event loop ran (``head_start``), with
        our ends of its pipes; where children get cgroups, it and what it started
        move into a new one (memory it used before stays counted where it was)."""
        cgroup = confinement.new_cgroup(name) if confinement else None
        child = cls(AdoptedProcess(popen), name, protocol_fds, stderr_fd, cgroup)
        await child.enter_cgroup(with_descendants=True)
        logger.debug("%s: adopted pid %d", name, popen.pid)
        return child

    async def enter_cgroup(self, *, with_descendants: bool = False) -> None:
        """Move the child (first, so that what it starts from now on is inside; then,
        ``with_descendants``, what it has started) into its cgroup, if it has one.
        One that cannot be moved is killed and reaped, and the error raised."""
        cgroup = self.cgroup
        if cgroup is None:
            return

        def move() -> None:
            try:
                cgroup.add(self.pid)
            except ProcessLookupError:
                # Already exited and reaped (asyncio's watcher reaps at once): there
                # is nothing left to contain, and its channel reports the death.
                logger.debug("%s: exited before it could be moved into its cgroup", self.name)
                return
            for process in self._descendants() if with_descendants else ():
                with contextlib.suppress(ProcessLookupError):
                    cgroup.add(process.pid)

        try:
            # Not on the event loop: a migration may wait out an RCU grace period in
            # the kernel (5 ms and more, seen here), which would hold up every call
            # and the very eviction that a swap's new child is started beside.
            # Shielded: a cancellation here would lose a child that nobody owns yet.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(move)
        except OSError:
            self.kill()
            await self.wait()
            self.close_pipes()
            raise

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
                    text = self._masked(line.decode("utf-8", "replace"))
                    self.stderr_tail.append(text)
                    logger.warning("%s stderr: %s", self.name, text)
        finally:
            os.close(fd)
        if pending:
            self.stderr_tail.append(self._masked(pending.decode("utf-8", "replace")))

    def _masked(self, text: str) -> str:
        return text if self.mask is None else self.mask(text)

    async def wait(self) -> ExitStatus:
        """Wait for the child to exit and reap it. Not cancellable: never leaves a zombie."""
        if self._status is None:
            with anyio.CancelScope(shield=True):
                returncode = await self._process.wait()
                group_ooms = self.cgroup.oom_kills() if self.cgroup is not None else None
                if self.cgroup is not None:
                    # Whatever the reaper left, the group holds; then it goes.
                    await anyio.to_thread.run_sync(self.cgroup.remove)
            oom = returncode == -signal.SIGKILL and self._killed_by_oom(group_ooms)
            self._status = ExitStatus.from_returncode(
                returncode, oom_killed=oom, memory_limit=self.memory_limit if group_ooms else None
            )
            logger.debug("%s: pid %d %s", self.name, self.pid, self._status.describe())
        return self._status

    def _killed_by_oom(self, group_ooms: int | None) -> bool:
        """Whether the SIGKILL that ended the child came from an OOM killer.

        The child's memory cgroup counts every OOM kill in it, its own limit's or the
        host's: that count is the answer. Only without one is the host's count of
        OOM kills compared with its value at the start, which takes any OOM kill on
        the host in the child's lifetime for the child's own (unless the supervisor
        sent the signal itself)."""
        if group_ooms is not None:
            return group_ooms > 0
        return (
            not self._signalled
            and self._oom_kills_at_start >= 0
            and oom_kill_count() > self._oom_kills_at_start
        )

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
        if self.cgroup is not None:
            self.cgroup.kill()

    @property
    def memory_limit(self) -> int | None:
        return self.cgroup.memory_limit if self.cgroup is not None else None

    def limit_memory(self, limit: int | None) -> bool:
        """A hard limit on the memory of the child and all it started; False without one."""
        if self.cgroup is None or limit is None:
            return False
        try:
            return self.cgroup.limit_memory(limit)
        except OSError as exc:
            logger.warning("%s: cannot set a memory limit: %s", self.name, exc)
            return False

    def memory_usage(self) -> int | None:
        """The exact memory of the child's group, where it has one."""
        return self.cgroup.memory_usage() if self.cgroup is not None else None

    def tree_pids(self) -> list[int]:
        """The child and every process it started, the child first; ``[]`` once gone.

        Read from the child's cgroup where it has one (one small file, where walking
        the process table costs about a millisecond per child, on every monitor tick
        and admission), which also counts processes that left the tree by a double
        fork."""
        if self.cgroup is None:
            return tree_pids(self.pid)
        members = self.cgroup.pids()
        if self.pid not in members:
            return []
        return [self.pid, *(pid for pid in members if pid != self.pid)]

    async def terminate(self, grace: float) -> ExitStatus:
        """SIGTERM (and SIGCONT) the group, wait up to ``grace`` seconds, then SIGKILL;
        always reaps."""
        if self._status is None and self._process.returncode is None:
            logger.info("%s: sending SIGTERM to pid %d", self.name, self.pid)
            self.signal_group(signal.SIGTERM)
            # A stopped process keeps SIGTERM pending until it runs again; systemd
            # sends the same pair. Without it a frozen child always sat out the grace.
            self.signal_group(signal.SIGCONT)
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
