"""Pre-started children, so that starting an app skips the interpreter's start-up.

A pooled child is ``python -m child`` started with no app: the runtime is
imported, optional modules are preloaded, no CUDA context exists, and it has
already said hello. ``start()`` hands it the app with a ``load`` request that
also carries the complete environment a freshly spawned child would have had;
the child replaces its environment with it, changes to the app directory and
puts that directory first on ``sys.path``. A pooled child serves one app, once,
and is never returned to the pool, so nothing leaks between apps.

It is used only where that is indistinguishable from a fresh start: not when
the app's environment sets variables read at interpreter start-up
(``PYTHON*``, ``NODE_*``, ``LD_*``, the allocator's). Variables that a
numerical library reads when it loads (thread-pool sizes: ``OMP_*``, ``MKL_*``
...) matter only to a child that preloaded one (configured, or learned by its
fork server); they are then part of its key (``PoolKey.import_env``), so an
app that sets them is served by children started with the same values once it
has asked for one, instead of a spawn every time.
Node.js apps get pre-started node children of their own, keyed apart by
``PoolKey.runtime``.

With ``fork_server`` (the default), each Python key also gets a fork server
(``fork_server``, a zygote with the same interpreter, preloads and library
settings, plus the ``inferencesh`` SDK where installed): once it is ready the
pool's idle children are forked from it instead of spawned, and a start that
finds no idle child left (starts closer together than the refill: swaps in a
row, a burst of replicas) gets a child forked for it at once (``acquire``)
instead of a spawn. A child says how it was started (``ChildProcess.start``):
``pool`` (an idle pre-started one), ``fork`` (forked for this start) or
``spawn`` (the replica's own, when the pool had nothing).

A fork server also imports what apps of its key imported when they were set up
(``learn``, ``learned_preloads``): the first app of an environment pays its
imports, and once it is set up the key's fork server is replaced in the
background by one that has them; the old one stops once its last child has
exited. Learned modules that make a zygote unusable (a thread, CUDA) are
forgotten, and the key's server is started with its configured preloads only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc

from ..environments.environment import child_environment
from .child_channel import ChildChannel
from .child_launch import DEFAULT_SHARED_MEMORY, launch_child
from .child_process import ChildProcess
from .confinement import Confinement
from .fork_server import READY_TIMEOUT, ForkServer, ForkServerError
from .head_start import EarlyChild
from .learned_preloads import LearnedPreloads

logger = logging.getLogger("supervisor.pool")

INTERPRETER_ENV_PREFIXES = ("PYTHON", "LD_", "MALLOC", "NODE_", "UV_")
"""Read when the interpreter starts: a pre-started child has already read them."""
LIBRARY_ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "NUMEXPR_", "GOMP_", "KMP_")
"""Read when a numerical library loads: they matter only if the pool preloaded one."""


def pool_safe(app_env: Mapping[str, str]) -> bool:
    """True when a pooled child can serve an app with this environment."""
    return not any(key.startswith(INTERPRETER_ENV_PREFIXES) for key in app_env)


def import_env(app_env: Mapping[str, str], preloads: bool) -> tuple[tuple[str, str], ...]:
    """The app's variables that a preloaded library has read by the time it is
    handed out: they must be the pooled child's own from its start."""
    if not preloads:
        return ()
    return tuple(sorted((k, v) for k, v in app_env.items() if k.startswith(LIBRARY_ENV_PREFIXES)))


@dataclass(frozen=True)
class PoolKey:
    """What a pre-started child was started with; a start may take only a child of its own key."""

    python: str
    """The interpreter: python, or node for ``runtime="node"``."""
    preload: tuple[str, ...] = ()
    runtime: str = "python"
    import_env: tuple[tuple[str, str], ...] = ()
    """Library settings (``import_env()``) the child is started with."""


@dataclass(eq=False)
class PooledChild:
    """A started child waiting in the pool, with its open channel."""

    process: ChildProcess
    channel: ChildChannel


def _describe(key: PoolKey, default: PoolKey) -> str:
    """A pool key for status: its preloads, and its runtime (node) or interpreter
    unless it is the default."""
    preload = ",".join(key.preload) or "(none)"
    preload += "".join(f" {k}={v}" for k, v in key.import_env)
    if key.runtime != "python":
        return f"{key.runtime}:{preload}"
    return preload if key.python == default.python else f"{key.python}:{preload}"


FORK_SERVER_EXTRAS = ("inferencesh",)
"""Imported by every fork server where installed: almost every app imports the SDK."""

REFILL_DELAY = 0.05
"""Seconds between a start taking a pooled child and the pool spawning its replacement."""
FIRST_FILL_GRACE = 0.25
"""Seconds the first fill waits for a start: starts issued with the supervisor's own
(``serve``'s apps) cannot use the pool yet, and go first instead of sharing the CPU."""
FIRST_FILL_WAIT = 30.0
"""At most this long for those starts (a torch app's spawn takes seconds)."""


class ChildPool:
    def __init__(
        self,
        size: int,
        preload: Sequence[str] = (),
        shared_memory: int = DEFAULT_SHARED_MEMORY,
        fork_server: bool = True,
        learned: LearnedPreloads | None = None,
    ) -> None:
        """``fork_server``: a zygote per Python key forks the pool's children and
        those of starts that find the pool empty (only with ``size`` > 0).
        ``learned``: where the modules that apps imported are kept; None: nothing
        is learned."""
        self.size = size
        self.fork_server = fork_server
        self.shared_memory = shared_memory
        self.default_key = PoolKey(sys.executable, tuple(preload))
        self.confinement: Confinement | None = None
        """Set by the supervisor: its children's cgroups and user."""
        self._idle: dict[PoolKey, list[PooledChild]] = {}
        self._wanted: set[PoolKey] = {self.default_key} if size > 0 else set()
        self._refill = anyio.Event()
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        """The pooled children's working directory, while ``run`` runs."""
        self._tasks: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._servers: dict[PoolKey, ForkServer] = {}
        self._no_server: set[PoolKey] = set()
        """Keys whose fork server failed: their children are spawned."""
        self.spawned = 0
        self.handed_out = 0
        self.forked = 0
        """Children forked for a start that found no idle one."""
        self.learned = learned
        self._renew: set[PoolKey] = set()
        """Keys whose fork server lacks modules learned since it started."""
        self._retiring: set[ForkServer] = set()
        """Replaced fork servers that still have children."""
        self._files = 0
        self._arriving: dict[PoolKey, anyio.Event] = {}
        """Keys whose adopted child (``adopt``) has not said hello yet."""
        self._adopted_dirs: list[str] = []
        self._start_coming = False
        """A start was asked for before the first fill: the first fill waits for it."""

    def key(self, python: str, preload: tuple[str, ...], app_env: Mapping[str, str]) -> PoolKey:
        """The key an app's children are taken by. Where its children may have
        libraries preloaded (configured, or learned by a fork server), the library
        settings the app sets are part of it."""
        learns = self.learned is not None and self.fork_server
        return PoolKey(python, preload, import_env=import_env(app_env, bool(preload) or learns))

    def take(self, key: PoolKey) -> PooledChild | None:
        """A ready pooled child for ``key``, or None; ``refill`` replaces it later."""
        if self.size <= 0 or self._closed:
            return None
        self._wanted.add(key)
        idle = self._idle.get(key, [])
        child = None
        while idle and child is None:
            candidate = idle.pop(0)
            if not candidate.channel.closed.is_set():
                child = candidate
        if child is not None:
            self.handed_out += 1
            child.process.start = "pool"
        return child

    async def acquire(self, key: PoolKey) -> PooledChild | None:
        """An idle child for ``key`` (``take``), else one forked now by the key's
        fork server, else None (the caller spawns). An adopted child that is still
        starting is waited for: it started before this request for it."""
        arriving = self._arriving.get(key)
        if arriving is not None and not self._idle.get(key):
            await arriving.wait()
        child = self.take(key)
        if child is not None:
            return child
        server = self._servers.get(key)
        if server is None or not server.alive or self._tasks is None:
            return None
        try:
            process, channel = await server.fork(
                f"fork[{server.forked}]",
                shared_memory=self.shared_memory,
                confinement=self.confinement,
                logger=logger,
            )
        except (ForkServerError, OSError) as exc:
            logger.warning("%s cannot fork (%s); the start spawns instead", server.name, exc)
            return None
        self._tasks.start_soon(channel.read_loop)
        self._tasks.start_soon(process.read_stderr)
        self.forked += 1
        process.start = "fork"
        return PooledChild(process, channel)

    def adopt(self, early: EarlyChild) -> None:
        """Keep a child spawned before this pool ran (``serve``'s head start) as an
        idle child of its key (interpreter, library settings) once it says hello. One
        this pool would not have started so (other preloads, arenas or user, library
        settings that are no part of this pool's keys, or no pool) is stopped."""
        key = self.key(early.python, early.preload, dict(early.import_env))
        matches = (
            key.import_env == early.import_env
            and early.preload == self.default_key.preload
            and early.shared_memory == self.shared_memory
            and (self.confinement is None or self.confinement.user is None)
        )
        if not matches or self._tasks is None or self._closed:
            logger.info("the head-start child does not fit this pool: stopped")
            early.close()
            return
        self._adopted_dirs.append(early.workdir)
        self._arriving[key] = anyio.Event()
        self._tasks.start_soon(self._adopt, key, early)

    async def _adopt(self, key: PoolKey, early: EarlyChild) -> None:
        try:
            process = await ChildProcess.adopt(
                early.process,
                f"pool[{self.spawned}]",
                early.protocol_fds,
                early.stderr_fd,
                self.confinement,
            )
            arenas = (early.arenas[0], early.arenas[1]) if early.arenas else None
            await self._add_idle(key, process, ChildChannel(process, logger, arenas=arenas))
        except OSError as exc:
            logger.warning("cannot adopt the head-start child: %s", exc)
        finally:
            self._arriving.pop(key).set()

    def refill(self) -> None:
        """Top the pool up in the background, once a start no longer needs the CPU."""
        self._refill.set()

    def learn(self, key: PoolKey, modules: Sequence[object]) -> None:
        """Remember the library modules an app of ``key`` imported (its setup's
        report); a running fork server of the key that lacks some is replaced."""
        if self.learned is None or not self._wants_server(key):
            return
        if not self.learned.learn(_learned_key(key), modules):
            return
        if key in self._servers:
            self._renew.add(key)
            self._refill.set()

    def idle_count(
        self, preload: tuple[str, ...] = (), import_env: tuple[tuple[str, str], ...] = ()
    ) -> int:
        """Idle children pre-started for this interpreter with these preloads (and
        these library settings)."""
        key = PoolKey(self.default_key.python, preload, import_env=import_env)
        return len(self._idle.get(key, []))

    def idle_count_for(self, python: str) -> int:
        """Idle children pre-started for this interpreter (an app environment's), any preloads."""
        return sum(len(v) for k, v in self._idle.items() if k.python == python)

    def settled(self) -> bool:
        """Every key asked for has its idle children and, where it gets one, its
        fork server ready (or given up): a start now takes a pre-started child."""
        return not self._renew and all(
            len(self._idle.get(key, [])) >= self.size
            and (not self._wants_server(key) or key in self._servers or key in self._no_server)
            for key in self._wanted
        )

    async def drain(self) -> None:
        """Stop the idle children; until a start asks for a refill, starts fork (or spawn)."""
        await self._terminate_idle()

    def status(self) -> dict[str, object]:
        return {
            "size": self.size,
            "idle": {_describe(k, self.default_key): len(v) for k, v in self._idle.items()},
            "spawned": self.spawned,
            "handed_out": self.handed_out,
            "forked": self.forked,
            "fork_servers": {
                _describe(k, self.default_key): server.status()
                for k, server in self._servers.items()
            },
        }

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep ``size`` idle children per wanted key, until cancelled."""
        self._workdir = tempfile.TemporaryDirectory(prefix="supervisor-pool-")
        os.chmod(self._workdir.name, 0o711)  # a child user must be able to start there
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                task_status.started()
                await self._before_first_fill()
                while True:
                    # A fresh event before spawning, not after: a start that asks
                    # for a refill (or for another key) while a spawn is under way
                    # is then not lost.
                    refill = self._refill = anyio.Event()
                    for key in list(self._wanted):
                        await self._start_server(key)
                        if key in self._renew:
                            await self._renew_server(key)
                        while len(self._idle.setdefault(key, [])) < self.size:
                            if not await self._spawn(key):
                                break
                    await refill.wait()
                    # Spawning forks this process and then keeps a core busy for a
                    # while: let the start that took a child serve its first
                    # requests first.
                    await anyio.sleep(REFILL_DELAY)
        finally:
            self._closed = True
            with anyio.CancelScope(shield=True):
                await self._terminate_idle()
                async with anyio.create_task_group() as closing:
                    for server in [*self._servers.values(), *self._retiring]:
                        closing.start_soon(server.close)
            self._workdir.cleanup()
            self._workdir = None
            for directory in self._adopted_dirs:
                shutil.rmtree(directory, ignore_errors=True)

    def start_coming(self) -> None:
        """An app start was asked for (its manifest and environment come first)."""
        self._start_coming = True

    async def _before_first_fill(self) -> None:
        """Let the starts asked for with the supervisor's own start end first: they
        spawn without a fork server and an idle child starting beside them. The fill
        begins ``REFILL_DELAY`` after their first ``refill()`` (as every refill does:
        spawning the fork server forks this process, which held up ``serve``'s first
        request by 5 ms), or after ``FIRST_FILL_GRACE`` if none came."""
        with anyio.move_on_after(FIRST_FILL_GRACE) as grace:
            await self._refill.wait()
        if grace.cancelled_caught and self._start_coming:
            with anyio.move_on_after(FIRST_FILL_WAIT):  # a start that failed early
                await self._refill.wait()
        if self._refill.is_set():
            await anyio.sleep(REFILL_DELAY)

    async def _start_server(self, key: PoolKey) -> None:
        """Start the key's fork server, and wait until it is ready to fork."""
        if not self._wants_server(key) or key in self._servers or key in self._no_server:
            return
        server = await self._launch_server(key, learned=True)
        if server is None and self.learned is not None and self.learned.get(_learned_key(key)):
            self.learned.forget(_learned_key(key))
            server = await self._launch_server(key, learned=False)
        if server is None:
            self._no_server.add(key)
            return
        self._servers[key] = server
        assert self._tasks is not None
        self._tasks.start_soon(self._forget_server_when_gone, key, server)

    async def _renew_server(self, key: PoolKey) -> None:
        """Replace the key's fork server by one that also imports what was learned
        since; its idle children are replaced by forks of the new one."""
        old = self._servers.get(key)
        if old is None:
            self._renew.discard(key)
            return
        try:
            server = await self._launch_server(key, learned=True)
        finally:
            self._renew.discard(key)  # settled() waits for this
        if server is None:
            logger.warning("%s keeps its preloads: the learned ones made it unusable", old.name)
            if self.learned is not None:
                self.learned.forget(_learned_key(key))
            return
        assert self._tasks is not None
        self._servers[key] = server
        self._tasks.start_soon(self._forget_server_when_gone, key, server)
        self._retiring.add(old)
        self._tasks.start_soon(self._retire, old)
        stale = self._idle.pop(key, [])
        async with anyio.create_task_group() as tasks:
            for pooled in stale:
                tasks.start_soon(self._discard, pooled.process)

    async def _retire(self, server: ForkServer) -> None:
        """Stop a replaced fork server once the children it forked have exited."""
        try:
            await server.retire()
        finally:
            self._retiring.discard(server)

    async def _launch_server(self, key: PoolKey, learned: bool) -> ForkServer | None:
        """A ready fork server for ``key`` that is safe to fork from, or None (logged)."""
        assert self._tasks is not None and self._workdir is not None
        env = child_environment(dict(key.import_env), cuda_visible_devices="", python=key.python)
        name = f"fork-server[{_describe(key, self.default_key)}]"
        extra = [m for m in FORK_SERVER_EXTRAS if m not in key.preload]
        modules = self.learned.get(_learned_key(key)) if learned and self.learned else ()
        optional_file = None
        if modules:
            self._files += 1
            optional_file = os.path.join(self._workdir.name, f"learned-{self._files}.txt")
            await anyio.Path(optional_file).write_text("\n".join(modules))
            os.chmod(optional_file, 0o644)  # a child user's zygote reads it
        try:
            server = await ForkServer.start(
                key.python,
                key.preload,
                optional=extra,
                optional_file=optional_file,
                env=env,
                cwd=self._workdir.name,
                name=name,
                confinement=self.confinement,
            )
        except OSError as exc:
            logger.warning("cannot start %s (%s): its children are spawned", name, exc)
            return None
        self._tasks.start_soon(server.run)
        ready = await server.wait_ready(READY_TIMEOUT)
        if optional_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(optional_file)
        refusal = "it did not start" if not ready else _unsafe_to_fork(server.info)
        if refusal is not None:
            logger.warning("%s is not used (%s)", name, refusal)
            await server.close()
            return None
        logger.info(
            "%s ready: pid %d, %d modules (%d learned)",
            name,
            server.process.pid,
            server.info.get("modules", 0),
            len(modules),
        )
        server.learned = len(modules)
        return server

    def _wants_server(self, key: PoolKey) -> bool:
        return (
            self.fork_server
            and sys.platform.startswith("linux")  # pidfds, SOCK_SEQPACKET, PDEATHSIG
            and key.runtime == "python"
        )

    async def _forget_server_when_gone(self, key: PoolKey, server: ForkServer) -> None:
        await server.gone.wait()
        if self._servers.get(key) is server and not self._closed:
            logger.warning("%s exited: its children are spawned from now on", server.name)
            del self._servers[key]
            self._no_server.add(key)

    async def _spawn(self, key: PoolKey) -> bool:
        """Pre-start a child for ``key``: forked by its fork server, or spawned."""
        assert self._tasks is not None and self._workdir is not None
        server = self._servers.get(key)
        if server is not None and server.alive:
            try:
                process, channel = await server.fork(
                    f"pool[{self.spawned}]",
                    shared_memory=self.shared_memory,
                    confinement=self.confinement,
                    logger=logger,
                )
            except (ForkServerError, OSError) as exc:
                logger.warning("%s cannot fork (%s); spawning instead", server.name, exc)
            else:
                return await self._add_idle(key, process, channel)
        env = child_environment(dict(key.import_env), cuda_visible_devices="", python=key.python)
        name = f"pool[{self.spawned}]"
        try:
            process, channel = await launch_child(
                key.python,
                key.preload,
                env=env,
                cwd=self._workdir.name,
                name=name,
                logger=logger,
                shared_memory=self.shared_memory if key.runtime == "python" else 0,
                prewarm=True,
                confinement=self.confinement,
                runtime=key.runtime,
            )
        except OSError as exc:
            logger.warning("cannot pre-start a child: %s", exc)
            return False
        return await self._add_idle(key, process, channel)

    async def _add_idle(self, key: PoolKey, process: ChildProcess, channel: ChildChannel) -> bool:
        """Wait for a pre-started child's hello, then keep it idle for ``key``."""
        assert self._tasks is not None
        self.spawned += 1
        self._tasks.start_soon(channel.read_loop)
        self._tasks.start_soon(process.read_stderr)
        self._tasks.start_soon(self._reap_when_dead, process, channel)
        try:
            hello = await channel.wait_hello()
        except BaseException:  # the pool is closing while this child starts
            with anyio.CancelScope(shield=True):
                await self._discard(process)
            raise
        if hello is None or hello.app is not None:
            logger.warning("pre-started child pid %d did not say hello", process.pid)
            await self._discard(process)
            return False
        self._idle.setdefault(key, []).append(PooledChild(process, channel))
        return True

    @staticmethod
    async def _discard(process: ChildProcess) -> None:
        await process.terminate(1.0)
        process.close_pipes()

    async def _reap_when_dead(self, process: ChildProcess, channel: ChildChannel) -> None:
        """Reap a pooled child that dies while idle (a handed-out one is reaped by its replica)."""
        await channel.closed.wait()
        for idle in self._idle.values():
            for pooled in list(idle):
                if pooled.process is process:
                    idle.remove(pooled)
                    with contextlib.suppress(Exception):
                        await self._discard(process)

    async def _terminate_idle(self) -> None:
        idle = [pooled for children in self._idle.values() for pooled in children]
        self._idle.clear()
        async with anyio.create_task_group() as tasks:
            for pooled in idle:
                tasks.start_soon(self._discard, pooled.process)


def _learned_key(key: PoolKey) -> str:
    """A pool key as the learned preloads' file names it."""
    return json.dumps([key.python, list(key.preload), [list(kv) for kv in key.import_env]])


def _unsafe_to_fork(info: Mapping[str, object]) -> str | None:
    """Why a ready zygote must not fork, from what it reported, or None.

    A Python thread may hold a lock that its forks would inherit locked; a CUDA
    context does not survive a fork. (Native threads that a library starts when
    imported, torch's among them, are idle then and are tolerated.)"""
    threads = info.get("python_threads")
    if isinstance(threads, int) and threads > 1:
        return f"its preloads started {threads - 1} Python thread(s)"
    if info.get("cuda"):
        return "its preloads initialised CUDA"
    return None
