"""One replica: keeps one child alive for an app, and serves requests on it.

A replica owns its successive children (``RunningChild``).
``ensure(config)`` returns a ready child for a setup config, starting one (from
the pool, or spawned) or replacing one whose config differs, after its
in-flight requests finish. A per-child watcher reaps the child when it dies
and, unless the replica meant it to stop, asks the restart policy what follows;
why a child died is recorded on the child (``RunningChild.killed``), which
tells its requests.

Requests are served on its children by ``serving.py`` (its capacity, and each
request run to its end), which asks the replica for a child that can take one
now (``child_for``) or for a ready one (``ensure``). Its spare child, when the
app asks for one, is ``standby.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from protocol import Check, Error, Load, ProtocolError, Result, Setup, Unload
from protocol import Log as LogMessage
from protocol import Progress as ProgressMessage

from .. import errors
from ..environments.environment import child_environment
from ..log_setup import log_progress
from ..process.child_launch import DEFAULT_SHARED_MEMORY, launch_child
from ..process.child_process import ChildProcess, ExitStatus
from ..process.confinement import Confinement
from ..process.pool import ChildPool, PooledChild, PoolKey, pool_safe
from .lifecycle import LIVE, Failure, Lifecycle, ReplicaState, VramClaim
from .request import Request, config_key, new_request_id
from .request_queue import RequestQueue
from .restart_policy import GiveUp, RestartPolicy
from .running_child import (
    GOING,
    ChildLimits,
    Fault,
    Refusal,
    RunningChild,
)
from .serving import Serving
from .standby import Standby, StandbyState


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything needed to start children for one app."""

    app_dir: Path
    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    max_concurrency: int = 1
    setup_timeout: float = 300.0
    run_timeout: float | None = None
    cancel_grace: float = 5.0
    kill_grace: float = 2.0
    unload_timeout: float = 10.0
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 30.0
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    python: str = sys.executable
    confinement: Confinement | None = None
    """Cgroups and the child user (``confinement``); None: the child's subreaper only."""
    preload: tuple[str, ...] = ()
    """Modules a child imports before its handshake (and the pool key it is taken by)."""
    shared_memory: int = DEFAULT_SHARED_MEMORY
    """Bytes of each of a child's two arenas (0: none)."""
    mask: Callable[[str], str] | None = None
    """Hides the app's secret values in its children's logs and errors."""
    node: str | None = None
    """The node executable, for a Node.js app: its children run the JavaScript
    runtime (``child/node/``) instead of ``python -m child``."""
    standby: bool = False
    """Keep a spare child with the app loaded (not set up), which the next start of
    the replica sets up instead of starting a child: a restart costs a setup."""


class Replica:
    def __init__(
        self,
        spec: ReplicaSpec,
        index: int,
        gpus: tuple[int, ...],
        on_change: Callable[[Replica], None] | None = None,
        pool: ChildPool | None = None,
        readmit: Callable[[Replica], Awaitable[None]] | None = None,
        gpu_env: Mapping[str, str] | None = None,
    ) -> None:
        """``readmit(replica)`` admits the app's VRAM on the replica's GPUs again before a
        start that follows an eviction or a failed start (see ``claim``): its
        GPUs may have been given to other apps meanwhile."""
        self.spec = spec
        self.index = index
        self.gpus = gpus
        self.gpu_env = dict(gpu_env or {})
        """What pins its children to its GPUs (``gpu_allocation.gpu_environment``)."""
        self.name = f"{spec.name}[{index}]"
        self.logger = logging.getLogger(f"supervisor.app.{spec.name}")
        self.lifecycle = Lifecycle(self.name)
        self.child: RunningChild | None = None
        self.restarts = 0
        self.evictions = 0
        """Children unloaded to free GPU memory (pressure, or room for another app)."""
        self.restarts_by_reason: Counter[str] = Counter()
        self.crash_times: list[float] = []
        self.last_exit: dict[str, Any] | None = None
        self.failed: Failure | None = None
        """Why the replica is ``FAILED``; None in any other state."""
        self._retry_scope = anyio.CancelScope()
        self._last_config: dict[str, Any] = {}
        """The setup values of the latest start."""
        self._good_config: dict[str, Any] | None = None
        """The setup values of the latest successful start: a replica whose start with
        other values failed goes back to them, and a retry starts with them."""
        self.on_configured: Callable[[dict[str, Any], str], None] | None = None
        """Called with setup values (and their key) once a child is set up with them."""
        self._on_change = on_change
        # fast_acquire: an uncontended acquire costs no trip through the event loop.
        self._lock = anyio.Lock(fast_acquire=True)
        self._not_before = 0.0
        self._tasks: anyio.abc.TaskGroup | None = None
        self.serving = Serving(self, spec.max_concurrency)
        """Its capacity, and the running of each request it takes."""
        self._start_scope = anyio.CancelScope()
        self.memory: dict[str, Any] | None = None
        """Its child's memory at the latest monitor sample, as the status shows it; set
        by the resource governor."""
        self.pool = pool
        self.description: dict[str, Any] | None = None
        """The app description its first load returned; restarts do not ask again."""
        self.standby = Standby(
            self.name,
            self._load_spare,
            self._terminate,
            lambda: self.child is not None and not self.stopping,
            self.logger,
        )
        """Its spare child, with the app loaded and not set up, when ``spec.standby``
        asks for one."""
        self._readmit = readmit
        self.claim = VramClaim.HELD
        """Whether its app's VRAM is promised to it, and whether it gave it up to an
        eviction (see ``VramClaim``)."""

    def readmitted(self) -> None:
        """Its app's VRAM is promised to it again (``readmit``, or a start without one)."""
        if self.claim is VramClaim.EVICTED:
            self.claim = VramClaim.RETURNING
        elif self.claim is VramClaim.LOST:
            self.claim = VramClaim.HELD

    @property
    def holds_vram_reservation(self) -> bool:
        """The app's VRAM budget stays promised to the replica while it is admitted and
        has not failed or stopped: a child that has not allocated it yet, or a
        restart, must still find it free."""
        return self.claim.admitted and self.lifecycle.state not in (
            ReplicaState.FAILED,
            ReplicaState.STOPPING,
            ReplicaState.STOPPED,
        )

    # -- running the replica -----------------------------------------------------

    async def run(
        self,
        queue: RequestQueue,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Own the replica's tasks and serve the app's queue, until cancelled."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            task_status.started()
            await self.serving.take_from(queue)

    async def cancel(self, request: Request) -> bool:
        """Cancel a request running here (see ``RunningChild.cancel``); False if it is not."""
        child = self.child
        return child is not None and await child.cancel(request.id)

    @property
    def tasks(self) -> anyio.abc.TaskGroup:
        assert self._tasks is not None, "the replica is not running"
        return self._tasks

    # -- serving requests -------------------------------------------------------

    def child_for(self, key: str) -> RunningChild | None:
        """The current child, if it can take a request with setup values ``key`` now
        (the replica is ready or busy, and the child's own check lets it)."""
        child = self.child
        if (
            child is None
            or self.lifecycle.state not in (ReplicaState.READY, ReplicaState.BUSY)
            or child.refusal(key) is not None
        ):
            return None
        return child

    def try_take(self, request: Request) -> RunningChild | None:
        """The child to run ``request`` on at once, with capacity taken for it
        (``Serving.try_take``); None when there is none, or no room."""
        return self.serving.try_take(request)

    async def serve(self, request: Request, child: RunningChild | None = None) -> None:
        """Run a request, for which capacity was taken, to its end (``Serving.serve``)."""
        await self.serving.serve(request, child)

    def _busy(self, busy: bool) -> None:
        """A request entered the current child (True), or its last one left (False)."""
        state = self.lifecycle.state
        if busy and state is ReplicaState.READY:
            self.lifecycle.to(ReplicaState.BUSY)
        elif not busy and state is ReplicaState.BUSY:
            self.lifecycle.to(ReplicaState.READY)

    # -- getting a ready child ------------------------------------------------

    async def ensure(self, config: dict[str, Any], key: str | None = None) -> RunningChild:
        """A ready child set up with ``config``: the current one, or a new one.

        New setup values are first checked by the current child (when it can),
        so that invalid ones fail their request and leave it serving.
        """
        key = key or config_key(config)
        checked = False
        async with self._lock:
            while True:
                state = self.lifecycle.state
                if state is ReplicaState.FAILED:
                    raise self.failed_error()
                if state in (ReplicaState.STOPPING, ReplicaState.STOPPED):
                    raise errors.AppStoppedError(f"{self.spec.name} is stopped")
                child = self.child
                refusal = None if child is None else child.refusal(key)
                if child is not None and refusal is Refusal.NOT_SERVING:
                    # Being killed: its watcher decides what comes next once it is reaped.
                    await child.wait_dead()
                    continue
                if child is not None and state in (ReplicaState.READY, ReplicaState.BUSY):
                    if refusal is None:
                        return child
                    if refusal is Refusal.SUSPECT:
                        await child.wait_heard()
                        continue
                    if not checked:
                        checked = True
                        await self._check_config(child, config)
                        # Look again: the child may have died, or a stop come, while
                        # it checked (a stop does not wait for this lock).
                        continue
                    if child.in_flight:
                        # Look again once it is idle: a stop, a crash or an eviction
                        # may have come meanwhile.
                        await child.drain()
                        continue
                    await self._retire(child, ReplicaState.UNLOADED, "setup config changed")
                    continue
                if state is ReplicaState.RESTARTING:
                    await anyio.sleep(max(0.0, self._not_before - time.monotonic()))
                try:
                    await self._start(config, key)
                except errors.SupervisorError:
                    if self.lifecycle.state is ReplicaState.RESTARTING:
                        continue
                    raise

    async def _start(self, config: dict[str, Any], key: str) -> None:
        if self.lifecycle.state in (ReplicaState.STOPPING, ReplicaState.STOPPED):
            raise errors.AppStoppedError(f"{self.spec.name} is stopped")
        restarting = self.lifecycle.state is ReplicaState.RESTARTING
        self._last_config = config
        self.lifecycle.to(ReplicaState.STARTING, "restart" if restarting else "")
        child: RunningChild | None = None
        pooled: PooledChild | None = None
        scope = self._start_scope = anyio.CancelScope()
        try:
            with anyio.fail_after(self.spec.setup_timeout), scope:
                if not self.claim.admitted and self._readmit is not None:
                    pooled = await self._readmit_fetching_a_child(self._readmit)
                self.readmitted()
                child = self.standby.take(config, key)
                if child is None:
                    child = await self._spawn(config, key, pooled=pooled)
                    pooled = None
                    await self._load(child)
                # A stop() that ran while the load's answer was on its way has
                # cancelled this scope, but the cancellation only lands at the next
                # checkpoint: the replica may already be STOPPED (handled below).
                if not scope.cancel_called:
                    self.lifecycle.to(ReplicaState.SETTING_UP)
                    setup = Setup(new_request_id(), config, self.metadata())
                    self._learn_imports(await self._call(child, setup))
        except (TimeoutError, _StartFailed, errors.SupervisorError) as exc:
            await self._discard(pooled)
            await self._abort_start(child, exc, restarting)
            raise AssertionError("unreachable") from None
        except BaseException:
            # Cancelled (the replica is stopping): leave no child behind.
            self._refill_pool()
            await self._discard(pooled)
            await self._terminate(child)
            raise
        await self._discard(pooled)  # a standby was taken instead
        if scope.cancel_called or self.stopping:
            await self._terminate(child)
            raise errors.AppStoppedError(f"{self.spec.name} is stopped")
        assert child is not None
        child.serve()
        self.child = child
        self._good_config = config
        if self.on_configured is not None:
            self.on_configured(config, key)
        self.lifecycle.to(ReplicaState.READY, f"pid {child.process.app_pid}")
        self.claim = VramClaim.HELD
        self._refill_pool()
        self.tasks.start_soon(self._heartbeat, child)
        if self.spec.standby:
            self.standby.renew()
            self.tasks.start_soon(self.standby.fill)
        self.changed()

    async def _readmit_fetching_a_child(
        self, readmit: Callable[[Replica], Awaitable[None]]
    ) -> PooledChild | None:
        """Admit the app's VRAM again, which may wait for an evicted app's exit, while
        a child comes from the pool or its fork server: no app is loaded into it
        before the admission, so it holds no VRAM. That child, or None."""
        if self.standby.child is not None or self.pool_key() is None:
            await readmit(self)
            return None
        fetched: list[PooledChild | None] = []
        done = anyio.Event()

        async def fetch() -> None:
            pooled: PooledChild | None = None
            try:
                pooled = await self._from_pool()
            except Exception:  # the start asks the pool again, and fails there
                pass
            finally:
                fetched.append(pooled)
                done.set()
            if pooled is not None:
                self.logger.debug(
                    "%s: child pid %d fetched during the admission", self.name, pooled.process.pid
                )

        self.tasks.start_soon(fetch)
        try:
            await readmit(self)
            await done.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await done.wait()
                await self._discard(fetched[0] if fetched else None)
            raise
        return fetched[0] if fetched else None

    async def _discard(self, pooled: PooledChild | None) -> None:
        """Stop a pooled child no start will use. Shielded, as ``_terminate``."""
        if pooled is not None:
            self.logger.debug("%s: child pid %d not needed: stopped", self.name, pooled.process.pid)
            with anyio.CancelScope(shield=True):
                await pooled.process.terminate(self.spec.kill_grace)

    async def _spawn(
        self,
        config: dict[str, Any],
        key: str,
        prewarm: bool = False,
        pooled: PooledChild | None = None,
    ) -> RunningChild:
        """A new child with no app yet, ``pooled``, else from the pool or spawned, and
        its watcher.

        ``prewarm``: a spawned child pays first-use costs before its hello, as pooled
        ones do; for a standby, which nothing waits for yet."""
        env = child_environment(
            {**self.spec.env, **self.gpu_env},
            cuda_visible_devices=",".join(str(g) for g in self.gpus),
            python=self.spec.python,
        )
        if pooled is None:
            pooled = await self._from_pool()
        if pooled is not None:
            process, channel, load_env = pooled.process, pooled.channel, env
            process.name = self.name
            channel.logger = self.logger
            process.mask = channel.mask = self.spec.mask
        else:
            process, channel = await launch_child(
                self.spec.node or self.spec.python,
                self.spec.preload,
                env=env,
                cwd=str(self.spec.app_dir),
                name=self.name,
                logger=self.logger,
                shared_memory=self.spec.shared_memory,
                prewarm=prewarm,
                confinement=self.spec.confinement,
                mask=self.spec.mask,
                runtime="python" if self.spec.node is None else "node",
            )
            load_env = {}
            self.tasks.start_soon(channel.read_loop)
            self.tasks.start_soon(process.read_stderr)
        self.logger.info("%s: child pid %d (%s)", self.name, process.pid, process.start)
        child = RunningChild(
            process,
            channel,
            config,
            key,
            tasks=self.tasks,
            name=self.name,
            limits=ChildLimits(self.spec.run_timeout, self.spec.cancel_grace, self.spec.kill_grace),
            metadata=self.metadata(),
            load_env=load_env,
            on_busy=self._busy,
            logger=self.logger,
        )
        self.tasks.start_soon(self._watch, child)
        return child

    async def _load(self, child: RunningChild) -> None:
        """Wait for the child's handshake, then load the app into it."""
        if await child.channel.wait_hello() is None:
            raise _StartFailed("the child exited before its handshake")
        load = Load(
            new_request_id(),
            str(self.spec.app_dir),
            child.load_env,
            describe=self.description is None,
        )
        description = await self._call(child, load)
        if description is not None:
            self.description = description

    # -- the standby ------------------------------------------------------------

    async def _load_spare(self) -> RunningChild | None:
        """A new child with the app loaded, for the standby; None when that failed
        (logged), or the replica stopped meanwhile."""
        child: RunningChild | None = None
        try:
            with anyio.fail_after(self.spec.setup_timeout):
                child = await self._spawn({}, "", prewarm=True)
                await self._load(child)
        except (TimeoutError, _StartFailed, errors.SupervisorError) as exc:
            self.logger.warning("%s: no standby: %s", self.name, getattr(exc, "message", exc))
            await self._terminate(child)
            return None
        except BaseException:
            await self._terminate(child)
            raise
        finally:
            self._refill_pool()
        if self.stopping:
            await self._terminate(child)
            return None
        return child

    async def _terminate(self, child: RunningChild | None) -> None:
        """Stop a child that never served (a start or a standby given up): it has
        nothing to unload. Shielded, so that a cancelled caller still leaves none behind."""
        if child is not None:
            child.retire()
            with anyio.CancelScope(shield=True):
                await child.process.terminate(self.spec.kill_grace)

    def pool_key(self) -> PoolKey | None:
        """The pool key this replica's children are taken by, or None (no pool)."""
        if self.pool is None or not pool_safe(self.spec.env):
            return None
        if self.spec.node is not None:
            return PoolKey(self.spec.node, runtime="node")
        return self.pool.key(self.spec.python, self.spec.preload, self.spec.env)

    async def _from_pool(self) -> PooledChild | None:
        """A pre-started child, or one forked by the pool's fork server."""
        key = self.pool_key()
        if self.pool is None or key is None:
            return None
        if key.runtime == "node":
            return self.pool.take(key)
        return await self.pool.acquire(key)

    def _learn_imports(self, set_up: object) -> None:
        """Hand what the app imported (its setup's report) to the pool's fork server."""
        key = self.pool_key()
        if self.pool is None or key is None or not isinstance(set_up, dict):
            return
        imports = set_up.get("imports")
        if isinstance(imports, list):
            self.pool.learn(key, imports)

    def _refill_pool(self) -> None:
        """Replace a pooled child we may have taken, now that the start is over."""
        if self.pool is not None:
            self.pool.refill()

    async def _abort_start(
        self, child: RunningChild | None, exc: BaseException, restarting: bool
    ) -> None:
        """Clean up a failed start and raise the error the caller should see."""
        self._refill_pool()
        status: ExitStatus | None = None
        if child is not None:
            child.retire()
            status = await child.process.terminate(self.spec.kill_grace)
            await child.wait_dead()
        stderr = "\n".join(child.process.stderr_tail) if child else ""
        details: dict[str, Any] = {"stderr": stderr} if stderr else {}
        if status is not None:
            details.update(status.to_dict())
        error: errors.SupervisorError
        if isinstance(exc, TimeoutError):
            error = errors.SetupFailedError(
                f"{self.name} did not become ready within {self.spec.setup_timeout:g} s", **details
            )
        elif isinstance(exc, _StartFailed):
            why = f" ({status.describe()})" if status else ""
            error = errors.SetupFailedError(f"{self.name}: {exc}{why}", **details)
        else:
            assert isinstance(exc, errors.SupervisorError)
            error = exc
        if not isinstance(error, errors.AdmissionError):
            # It cannot come back by itself.
            self.claim = VramClaim.HELD if self.claim.admitted else VramClaim.LOST
        good = self._good_config
        callers_values = good is not None and config_key(good) != config_key(self._last_config)
        if self.stopping:
            pass  # stop() ran meanwhile and has set the replica's state
        elif isinstance(error, errors.LoadFailedError):
            self._fail(error.message, "load", self.spec.restart_policy.cooldown)
        elif (
            restarting
            and not callers_values
            and not isinstance(error, (errors.InputValidationError, errors.AdmissionError))
        ):
            # The values that worked fail now: the app's fault, counted.
            self._exited(f"restart failed: {error.message}", "restart_failed", fault=True)
        else:
            self.lifecycle.to(ReplicaState.UNLOADED, "start failed")
            # The next start is admitted again.
            self.claim = VramClaim.EVICTED if self.claim.evicted else VramClaim.LOST
            if callers_values and not isinstance(error, errors.AdmissionError):
                # Values a caller sent failed: serve the configuration that worked.
                assert good is not None
                self.tasks.start_soon(self._restart, good)
        self.changed()
        raise error

    async def _check_config(self, child: RunningChild, config: dict[str, Any]) -> None:
        """Have ``child`` validate setup values (``InputValidationError`` if they are
        invalid); a child that dies before it answers is its watcher's business."""
        hello = child.channel.hello
        if hello is None or "check" not in hello.features:
            return  # a child that cannot check: its replacement's setup will
        with contextlib.suppress(_StartFailed):
            await self._call(child, Check(new_request_id(), config))

    async def _call(self, child: RunningChild, message: Load | Setup | Check) -> Any:
        """Send a load or setup request and wait for its outcome."""
        with child.channel.open_inbox(message.id) as inbox:
            try:
                await child.channel.send(message)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the inbox ends when the channel closes: reported below
            except TypeError as exc:  # the values cannot be encoded: the caller's
                raise errors.InputValidationError(
                    f"the {message.TYPE} cannot be sent: {exc}"
                ) from None
            async for reply in inbox:
                if isinstance(reply, Result):
                    return reply.output
                if isinstance(reply, Error):
                    raise errors.from_error_info(reply.error)
                if isinstance(reply, LogMessage):
                    self.logger.info("[%s] %s", reply.stream, reply.message)
                elif isinstance(reply, ProgressMessage):
                    log_progress(self.logger, message.TYPE, reply)
        raise _StartFailed(f"the child died during {message.TYPE}")

    def metadata(self) -> dict[str, Any]:
        return {
            "app_id": self.spec.name,
            "worker_id": self.name,
            "gpu_ids": [str(g) for g in self.gpus],
        }

    # -- death, restarts, stopping ---------------------------------------------

    async def _watch(self, child: RunningChild) -> None:
        """Wait for the child to die, reap it, and decide what comes next."""
        status = await child.reaped()
        if self.standby.holds(child):
            if self.standby.died(child, status):
                self.tasks.start_soon(self.standby.fill)
            return
        if self.child is not child:
            return  # a start given up, a standby being loaded, or retired on purpose
        self.child = None
        killed = child.killed
        self.last_exit = {
            "reason": killed.reason.message if killed else status.describe(),
            "at": time.time(),
            **status.to_dict(),
        }
        if killed is not None and isinstance(killed.reason, errors.EvictedError):
            self.lifecycle.to(ReplicaState.UNLOADED, killed.reason.message)
        else:
            self.logger.warning(
                "%s: child pid %d stopped: %s",
                self.name,
                child.process.app_pid,
                self.last_exit["reason"],
            )
            if killed is not None:
                category = killed.reason.type
            else:
                category = "oom_killed" if status.oom_killed else "crash"
            fault = killed is None or killed.fault is Fault.APP
            self.last_exit["fault"] = fault
            self._exited(self.last_exit["reason"], category, fault=fault)
            if self.lifecycle.state is ReplicaState.RESTARTING:
                self.tasks.start_soon(self._restart, child.config)
        self.changed()

    async def _heartbeat(self, child: RunningChild) -> None:
        """Ping the child, idle or busy (the child answers while app code runs); one
        that does not answer in time is hung or frozen, and is killed for it."""
        while not child.dead:
            await anyio.sleep(self.spec.heartbeat_interval)
            if child.state in GOING:
                continue
            answered = await child.ping(self.spec.heartbeat_timeout)
            if answered or child.state in GOING:
                continue
            child.kill(
                errors.ChildCrashedError(
                    f"the child did not answer a heartbeat within "
                    f"{self.spec.heartbeat_timeout:g} s (hung or frozen)"
                ),
                Fault.APP,
            )

    def _exited(self, reason: str, category: str, *, fault: bool) -> None:
        """Ask the restart policy what follows a child's exit, and do it; ``category``
        groups restarts for metrics (``crash``, ``oom_killed``, or the error type a
        kill was for). Only a fault counts towards giving up."""
        now = time.monotonic()
        self.crash_times, decision = self.spec.restart_policy.after_exit(
            self.crash_times, now, fault=fault
        )
        if isinstance(decision, GiveUp):
            self.lifecycle.to(ReplicaState.RESTARTING, reason)
            self._fail(f"{reason}; {decision.reason}", "restarts", decision.retry_after)
            return
        self.restarts += 1
        self.restarts_by_reason[category] += 1
        self._not_before = now + decision.delay
        when = f"in {decision.delay:g} s" if fault else "now"
        self.lifecycle.to(ReplicaState.RESTARTING, f"{reason}; restart {when}")

    def _fail(self, failure: str, limit: str, retry_after: float | None = None) -> None:
        """Give up on the replica until ``retry_after`` seconds have passed (or for good
        when None); its standby has nothing left to stand in for.

        ``limit`` names what gave out: ``restarts`` (too many faults in the
        policy's window) or ``load`` (the app cannot be imported).
        """
        now = time.time()
        self.failed = Failure(
            failure, limit, now, None if retry_after is None else now + retry_after
        )
        self.lifecycle.to(ReplicaState.FAILED, failure)
        if self._tasks is None:
            return
        if self.standby.state is not StandbyState.EMPTY:
            self._tasks.start_soon(self.standby.drop)
        if retry_after is not None:
            self._retry_scope.cancel()
            self._tasks.start_soon(self._retry_after_cooldown, retry_after)

    def failed_error(self) -> errors.AppFailedError:
        """What a request to the failed replica is told: why, and when it is tried again."""
        retry = ""
        failed = self.failed
        assert failed is not None, "the replica has not failed"
        details: dict[str, Any] = {"limit": failed.limit}
        if failed.retry_at is not None:
            retry_in = max(0.0, failed.retry_at - time.time())
            retry = f"; tried again in {retry_in:.0f} s"
            details["retry_in"] = retry_in
        return errors.AppFailedError(f"{self.name} failed: {failed.message}{retry}", **details)

    async def _retry_after_cooldown(self, delay: float) -> None:
        with anyio.CancelScope() as scope:
            self._retry_scope = scope
            await anyio.sleep(delay)
        if not scope.cancel_called and self.lifecycle.state is ReplicaState.FAILED:
            self.logger.info("%s: cool-down over; trying again", self.name)
            await self.retry()

    async def retry(self) -> None:
        """Clear a failure and start again now, with a fresh restart budget (the
        cool-down's end, or an operator's restart). Errors are the status's news."""
        if self.lifecycle.state is not ReplicaState.FAILED:
            return
        self._retry_scope.cancel()
        self.crash_times = []
        self.failed = None
        self._not_before = 0.0
        self.lifecycle.to(ReplicaState.RESTARTING, "retry after failure")
        self.changed()
        config = self._good_config if self._good_config is not None else self._last_config
        with contextlib.suppress(errors.SupervisorError):
            await self.ensure(config)

    async def restart(self) -> None:
        """An operator's restart: a failed replica is tried again at once; a running one
        gets a fresh child once its requests are done."""
        if self.lifecycle.state is ReplicaState.FAILED:
            await self.retry()
            return
        config = self._good_config if self._good_config is not None else self._last_config
        async with self._lock:
            child = self.child
            if child is not None and self.lifecycle.state in (
                ReplicaState.READY,
                ReplicaState.BUSY,
            ):
                config = child.config
                await child.drain()
                if self.child is child:
                    await self._retire(child, ReplicaState.UNLOADED, "restarted by the operator")
        if not self.stopping:
            with contextlib.suppress(errors.SupervisorError):
                await self.ensure(config)

    async def _restart(self, config: dict[str, Any]) -> None:
        with contextlib.suppress(errors.SupervisorError):
            await self.ensure(config)

    async def _retire(self, child: RunningChild, then: ReplicaState, reason: str) -> None:
        """Stop a child on purpose: ask it to unload, then terminate what remains."""
        child.retire()
        self.child = None
        self.lifecycle.to(
            then if then is not ReplicaState.STOPPED else ReplicaState.STOPPING, reason
        )
        with contextlib.suppress(
            anyio.BrokenResourceError, anyio.ClosedResourceError, ProtocolError
        ):
            await child.channel.send(Unload())
        # Wait on the process itself, not on its watcher: a retire may outlive the
        # replica's tasks (an eviction running while the app stops), and must still end.
        with anyio.move_on_after(self.spec.unload_timeout, shield=True):
            await child.process.wait()
        if child.process.exit_status is None:
            self.logger.warning(
                "%s: pid %d did not unload in time", self.name, child.process.app_pid
            )
        with anyio.CancelScope(shield=True):
            await child.process.terminate(self.spec.kill_grace)  # reaps; kills leftovers
        self.changed()

    async def evict(self, reason: str) -> bool:
        """Unload an idle child to free its memory; it starts again on the next request."""
        child = self.child
        if child is None or child.in_flight or self.lifecycle.state is not ReplicaState.READY:
            return False
        async with self._lock:
            if self.child is not child or child.in_flight:
                return False
            await self._retire(child, ReplicaState.UNLOADED, reason)
            self.claim = VramClaim.EVICTED
            self.evictions += 1
            await self.standby.drop()
        return True

    async def stop(self) -> None:
        """Unload the child (with a deadline), then kill what remains."""
        if self.lifecycle.state in (ReplicaState.STOPPING, ReplicaState.STOPPED):
            return
        self._start_scope.cancel()
        self._retry_scope.cancel()
        child = self.child
        if child is not None and self.lifecycle.state in LIVE:
            await self._retire(child, ReplicaState.STOPPED, "stop")
        else:
            self.lifecycle.to(ReplicaState.STOPPING, "stop")
        await self.standby.drop()
        self.lifecycle.to(ReplicaState.STOPPED)
        self.changed()

    @property
    def stopping(self) -> bool:
        return self.lifecycle.state in (ReplicaState.STOPPING, ReplicaState.STOPPED)

    def changed(self) -> None:
        """Tell the owner that the replica's child (or its absence) changed."""
        if self._on_change is not None:
            self._on_change(self)

    # -- reporting --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        child, failed = self.child, self.failed
        return {
            "slot": self.index,
            "state": self.lifecycle.state.value,
            "state_reason": self.lifecycle.reason,
            "pid": child.process.app_pid if child else None,
            "start": child.process.start if child else None,
            "standby_pid": self.standby.pid,
            "gpus": list(self.gpus),
            "restarts": self.restarts,
            "restarts_by_reason": dict(self.restarts_by_reason),
            "evictions": self.evictions,
            "evicted": self.claim.evicted,
            "last_exit": self.last_exit,
            "failure": failed.message if failed else None,
            "failure_limit": failed.limit if failed else None,
            "failed_at": failed.at if failed else None,
            "retry_at": failed.retry_at if failed else None,
            "in_flight": len(child.in_flight) if child else 0,
            "uptime": time.monotonic() - child.started_at if child else None,
            "idle_for": time.monotonic() - child.last_used
            if child and not child.in_flight
            else None,
            "memory": self.memory if child else None,
            "cgroup_memory": _cgroup_memory(child.process) if child else None,
        }


def _cgroup_memory(process: ChildProcess) -> dict[str, Any] | None:
    """Exact figures of the child's cgroup (all its processes), where it has one."""
    if process.cgroup is None:
        return None
    return {"current": process.memory_usage(), "limit": process.memory_limit}


class _StartFailed(Exception):
    pass
