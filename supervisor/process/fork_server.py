"""The supervisor's side of a fork server (zygote): start one, fork children from it.

A zygote (``child.fork_server``) is ``python -m child.fork_server`` with the
runtime and an environment's heavy modules imported; it forks a child per
request in a few milliseconds. The request carries the child's descriptors
(protocol pipes, stderr, arenas) as ``SCM_RIGHTS`` over a ``SOCK_SEQPACKET``
socket pair, so a forked child is wired exactly as a spawned one, and its
supervisor-side handle is an ordinary :class:`ChildProcess` over a
:class:`ForkedProcess`, whose exit status the zygote reports, since only the
zygote (its parent) can reap it. Cgroups are applied as for a spawn: the child
waits to see itself in them before it forks its runtime. A child user and its
resource limits are the zygote's own (it was started through them), so its
forks inherit them.

The zygote dies with the supervisor (its parent-death signal) and exits when
its socket ends; its children die with it. If it dies while children it forked
are alive, they are killed and reported as killed by SIGKILL.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import signal
import socket
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import msgpack
import psutil

from .child_channel import ChildChannel
from .child_command import create_arenas
from .child_process import ChildProcess, ExternalProcess
from .confinement import Confinement

logger = logging.getLogger("supervisor.fork_server")

READY_TIMEOUT = 600.0
"""Seconds a zygote may take to import its preloads (torch and friends: seconds)."""
FORK_TIMEOUT = 10.0
"""Seconds the zygote may take to answer a fork: it forks at once, or it is stuck."""
LOST_TIMEOUT = 5.0
"""Seconds to wait for the children of a zygote that died to be gone."""


class ForkServerError(Exception):
    """The zygote cannot fork (it died, or never became ready)."""


class ForkedProcess(ExternalProcess):
    """A process the zygote forked: signalled here, reaped and reported by the zygote."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self._returncode: int | None = None
        self._exited = anyio.Event()

    def exited(self, returncode: int) -> None:
        if self._returncode is None:
            self._returncode = returncode
            self._exited.set()

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode


class ForkServer:
    """One running zygote. Create with :meth:`start`, then run :meth:`run` in a task."""

    def __init__(self, process: ChildProcess, sock: socket.socket) -> None:
        self.process = process
        self.name = process.name
        self._socket = sock
        self.ready = anyio.Event()
        self.info: dict[str, Any] = {}
        """What the zygote said when ready: its threads, CUDA, how many modules."""
        self.forked = 0
        self.learned = 0
        """How many of its preloads were learned from apps (``learned_preloads``)."""
        self.gone = anyio.Event()
        self._child_exited = anyio.Event()
        self._ids = itertools.count(1)
        self._waiting: dict[int, anyio.Event] = {}
        self._answers: dict[int, ForkedProcess] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._scope = anyio.CancelScope()

    @classmethod
    async def start(
        cls,
        python: str,
        preload: Sequence[str],
        *,
        optional: Sequence[str] = (),
        optional_file: str | None = None,
        env: dict[str, str],
        cwd: str,
        name: str,
        confinement: Confinement | None = None,
    ) -> ForkServer:
        """Spawn a zygote; it is usable once ``ready`` is set (``run`` reads its hello).

        ``optional`` and the names in ``optional_file`` (one per line: the learned
        ones, too many for a command line) are imported where they can be."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [python, "-m", "child.fork_server", "--socket", str(theirs.fileno())]
        if preload:
            argv += ["--preload", ",".join(preload)]
        if optional:
            argv += ["--optional", ",".join(optional)]
        if optional_file:
            argv += ["--optional-file", optional_file]
        if confinement is not None and confinement.user is not None:
            # Its forks inherit the user and the limits; cgroups are per child.
            argv, env = confinement.command(argv), confinement.environment(env, None)
        try:
            process = await ChildProcess.spawn(
                argv, env=env, cwd=cwd, name=name, pass_fds=[theirs.fileno()]
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        for fd in process.take_protocol_fds():
            os.close(fd)  # it talks over the socket only
        ours.setblocking(False)
        return cls(process, ours)

    async def wait_ready(self, timeout: float) -> bool:
        """True once the zygote has imported everything; False if it died or took too long."""
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as race:

                async def gone() -> None:
                    await self.gone.wait()
                    race.cancel_scope.cancel()

                race.start_soon(gone)
                await self.ready.wait()
                race.cancel_scope.cancel()
        return self.alive

    @property
    def alive(self) -> bool:
        return self.ready.is_set() and not self.gone.is_set()

    async def run(self) -> None:
        """Read the zygote's messages until its socket ends or this is cancelled;
        then stop it, and settle the children it had."""
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self.process.read_stderr)
                with self._scope:  # cancelled by ``close``, even before it is entered
                    await self._read()
                tasks.cancel_scope.cancel()
        finally:
            self.gone.set()
            self._socket.close()
            for event in self._waiting.values():
                event.set()
            self._child_exited.set()
            with anyio.CancelScope(shield=True):
                await self._settle()

    async def close(self) -> None:
        """Stop the zygote (its children die with it); returns once ``run`` is over."""
        self._scope.cancel()
        await self.gone.wait()

    async def retire(self) -> None:
        """Stop the zygote once every child it forked has exited (it was replaced)."""
        while self._children and not self.gone.is_set():
            self._child_exited = anyio.Event()
            await self._child_exited.wait()
        await self.close()

    async def _read(self) -> None:
        while True:
            await anyio.wait_readable(self._socket)
            try:
                data = self._socket.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                message = msgpack.unpackb(data)
                self._dispatch(message)
            except (ValueError, TypeError, KeyError) as exc:
                logger.error(
                    "%s sent a message that makes no sense (%s); stopping it", self.name, exc
                )
                return

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "forked" in message:
            child = self._children[message["pid"]] = ForkedProcess(message["pid"])
            self._answers[message["forked"]] = child
            waiter = self._waiting.get(message["forked"])
            if waiter is not None:
                waiter.set()
        elif "exited" in message:
            exited = self._children.pop(message["exited"], None)
            if exited is not None:
                exited.exited(message["returncode"])
                self._child_exited.set()
        elif "ready" in message:
            self.info = message
            self.ready.set()

    async def _settle(self) -> None:
        """Stop the zygote, and report its children that nobody can reap any more
        (they die with it: their reapers' parent-death signal) as killed."""
        with anyio.move_on_after(LOST_TIMEOUT) as waiting:  # it exits at its socket's end
            await _exit_of(self.process.pid)
        if waiting.cancelled_caught:
            await self.process.terminate(1.0)
        else:
            await self.process.wait()  # reaps it at once
        self.process.close_pipes()
        lost, self._children = list(self._children.values()), {}
        for child in lost:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        with anyio.move_on_after(LOST_TIMEOUT):
            for child in lost:
                await _exit_of(child.pid)
        for child in lost:
            child.exited(-signal.SIGKILL)

    async def fork(
        self,
        name: str,
        *,
        shared_memory: int,
        confinement: Confinement | None,
        logger: logging.Logger,
    ) -> tuple[ChildProcess, ChildChannel]:
        """A new child with no app yet, wired as ``launch_child`` wires a spawned one."""
        if not self.alive:
            raise ForkServerError(f"{self.name} is not running")
        cgroup = confinement.new_cgroup(name) if confinement is not None else None
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        theirs = [to_child_read, from_child_write, stderr_write]
        ours = [to_child_write, from_child_read, stderr_read]
        mappings: list[mmap.mmap] = []
        request_id = next(self._ids)
        waiter = self._waiting[request_id] = anyio.Event()
        try:
            fds, mappings = create_arenas(shared_memory)
            theirs += fds
            request = {"id": request_id, "cgroups": ";".join(cgroup.names) if cgroup else ""}
            await self._send(msgpack.packb(request), theirs)
            with anyio.CancelScope(shield=True), anyio.move_on_after(FORK_TIMEOUT):
                await waiter.wait()
            forked = self._answers.pop(request_id, None)
            if forked is None:
                raise ForkServerError(f"{self.name} did not fork")
        except BaseException:
            for fd in ours:
                os.close(fd)
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            self._waiting.pop(request_id, None)
            for fd in theirs:
                os.close(fd)
        self.forked += 1
        process = ChildProcess(forked, name, (from_child_read, to_child_write), stderr_read, cgroup)
        await process.enter_cgroup()
        logger.debug("%s: forked pid %d from %s", name, forked.pid, self.name)
        arenas = (mappings[0], mappings[1]) if mappings else None
        return process, ChildChannel(process, logger, arenas=arenas)

    async def _send(self, data: bytes, fds: list[int]) -> None:
        while True:
            try:
                socket.send_fds(self._socket, [data], fds)
                return
            except BlockingIOError:
                await anyio.wait_writable(self._socket)
            except OSError as exc:
                raise ForkServerError(f"{self.name} is gone: {exc}") from exc

    def status(self) -> dict[str, Any]:
        try:
            rss: int | None = psutil.Process(self.process.pid).memory_info().rss
        except psutil.Error:
            rss = None
        return {
            "pid": self.process.pid,
            "ready": self.ready.is_set(),
            "forked": self.forked,
            "children": len(self._children),
            "modules": self.info.get("modules"),
            "learned": self.learned,
            "rss": rss,
        }


async def _exit_of(pid: int) -> None:
    """Wait until ``pid`` (any process, not only a child of ours) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):  # no pidfds (Linux before 5.3, gVisor): poll
        while _exists(pid):  # noqa: ASYNC110 - another process's exit sets no event here
            await anyio.sleep(0.01)
        return
    try:
        await anyio.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def _exists(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
