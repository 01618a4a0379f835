"""The handle a caller holds for one started app.

An app has a bounded queue and one or more replicas that take requests
from it. Every request, from the library (``run``, ``stream``) or from HTTP
(``submit``, then ``follow``), takes the same path (``_dispatch``): a replica
that is free when no request waits before it takes it at once
(``Replica.try_take``); otherwise it waits in the queue for a replica to take it.
Either way ``Replica.serve`` runs it; the callers differ only in which task runs
that (``run``'s own, or the replica's) and in how they wait for the outcome. A
full queue answers at once with ``BusyError`` rather than letting latency grow
without bound.

Setup values travel with each request. A request without them runs with the
app's current configuration: the operator's (``start(setup=...)``), or the
latest values a child was successfully set up with. A request whose values
differ gets a child set up with them, and they become the current
configuration only once that setup has succeeded: invalid values fail that
request alone. With ``lock_setup`` the operator's values are the only ones.

What a caller sends is bounded here (``InputLimits``), and a caller's timeout
can only shorten the operator's ``run_timeout``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .. import errors
from ..events import Event, ResultEvent
from .input_limits import InputLimits
from .lifecycle import ReplicaState
from .replica import Replica
from .request import Request, config_key, new_request_id
from .request_queue import RequestQueue
from .running_child import RunningChild


class App:
    def __init__(
        self,
        name: str,
        app_dir: Path,
        replicas: list[Replica],
        queue_size: int,
        setup: dict[str, Any],
        run_timeout: float | None,
        on_stop: Callable[[App], None] | None = None,
        *,
        limits: InputLimits | None = None,
        lock_setup: bool = False,
    ) -> None:
        self.name = name
        self.app_dir = app_dir
        self.replicas = replicas
        self.setup = dict(setup)
        self._setup_key = config_key(self.setup)
        self.run_timeout = run_timeout
        self.limits = limits or InputLimits()
        self.lock_setup = lock_setup
        """Refuse setup values other than the operator's."""
        for replica in replicas:
            replica.on_configured = self._configured
        self.started_at = time.monotonic()
        self.cold_start: float | None = None
        """Seconds from ``start()`` to the first ready child."""
        self._queue = RequestQueue(queue_size)
        self._turn = 0
        self._requests: dict[str, Request] = {}
        self._scope = anyio.CancelScope()
        self._stopped = False
        self._on_stop = on_stop
        self.description: dict[str, Any] = {}
        self.vram_budget: int | None = None
        self.ram_budget: int | None = None
        self.environment: dict[str, Any] | None = None
        """The interpreter and (when it has requirements) the environment it runs in."""
        self.warnings: list[str] = []
        """What the start found amiss without failing (missing system packages, no GPU)."""

    # -- the public API -------------------------------------------------------

    @property
    def functions(self) -> dict[str, dict[str, Any]]:
        """Function name -> description, input and output JSON schemas, streaming flag."""
        return dict(self.description.get("functions", {}))

    @property
    def setup_schema(self) -> dict[str, Any] | None:
        return self.description.get("setup_schema")

    async def run(
        self,
        input: dict[str, Any],
        *,
        function: str = "run",
        setup: dict[str, Any] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Run a function and return its output (a dict); raise a ``SupervisorError``."""
        result = await self.call(
            input,
            function=function,
            setup=setup,
            timeout=timeout,
            request_id=request_id,
            metadata=metadata,
        )
        return result.output

    async def call(
        self,
        input: dict[str, Any],
        *,
        function: str = "run",
        setup: dict[str, Any] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ResultEvent:
        """``run``, returning the whole result (output, request id, timings)."""
        # Not built on ``stream``: an async generator left at its result is closed
        # later by a task of its own, which would cost every call two extra tasks.
        request = self._new_request(input, function, setup, timeout, request_id, metadata)
        taken = self._dispatch(request)
        try:
            if taken is not None:
                replica, child = taken
                await replica.serve(request, child)  # in this task: no hand-over and back
            return await request.result()
        finally:
            if not request.finished:
                with anyio.CancelScope(shield=True):
                    await self.cancel(request.id)

    async def stream(
        self,
        input: dict[str, Any],
        *,
        function: str = "run",
        setup: dict[str, Any] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AsyncIterator[Event]:
        """Run a function and yield its logs, progress and partial outputs, then its result."""
        request = self.submit(
            input,
            function=function,
            setup=setup,
            timeout=timeout,
            request_id=request_id,
            metadata=metadata,
        )
        async for event in self.follow(request):
            yield event

    async def follow(self, request: Request) -> AsyncIterator[Event]:
        """Yield the events of a submitted request and raise its error; a caller that
        stops following before the end cancels the request."""
        try:
            while (item := await request.next_item()) is not None:
                if isinstance(item, errors.SupervisorError):
                    raise item
                yield item
        finally:
            if not request.finished:
                with anyio.CancelScope(shield=True):
                    await self.cancel(request.id)

    def submit(
        self,
        input: dict[str, Any],
        *,
        function: str = "run",
        setup: dict[str, Any] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Request:
        """Start a request and return it; ``follow`` (or its ``next_item``) carries
        its events and outcome."""
        request = self._new_request(input, function, setup, timeout, request_id, metadata)
        taken = self._dispatch(request)
        if taken is not None:
            replica, child = taken
            replica.tasks.start_soon(replica.serve, request, child)
        return request

    def _new_request(
        self,
        input: dict[str, Any],
        function: str,
        setup: dict[str, Any] | None,
        timeout: float | None,
        request_id: str | None,
        metadata: dict[str, Any] | None,
    ) -> Request:
        if self._stopped:
            raise errors.AppStoppedError(f"{self.name} is stopped")
        failed = [s for s in self.replicas if s.lifecycle.state is ReplicaState.FAILED]
        if failed and len(failed) == len(self.replicas):
            raise failed[0].failed_error()
        if not isinstance(input, dict):
            raise errors.InputValidationError(
                f"the input must be a dict, not {type(input).__name__}"
            )
        self.limits.check(input, "input")
        config, key = self.setup, self._setup_key
        if setup is not None:
            if not isinstance(setup, dict):
                raise errors.InputValidationError(
                    f"the setup must be a dict, not {type(setup).__name__}"
                )
            self.limits.check(setup, "setup")
            if setup != self.setup:
                if self.lock_setup:
                    raise errors.InputValidationError(
                        f"{self.name}: the setup is locked by the operator; "
                        "send no setup, or the operator's values"
                    )
                config = dict(setup)
                key = config_key(config)
        if request_id is not None and request_id in self._requests:
            raise errors.InputValidationError(f"request id {request_id!r} is already in use")
        return Request(
            function=function,
            input=input,
            config=config,
            metadata=dict(metadata or {}),
            timeout=self._timeout(timeout),
            id=request_id if request_id is not None else new_request_id(),
            config_key=key,
            on_end=self._forget_request,
        )

    def _timeout(self, timeout: float | None) -> float | None:
        """A caller's timeout, which may shorten the operator's but never lengthen it."""
        if timeout is None:
            return self.run_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise errors.InputValidationError(
                f"timeout must be a positive, finite number of seconds, not {timeout!r}"
            )
        return timeout if self.run_timeout is None else min(float(timeout), self.run_timeout)

    def _configured(self, config: dict[str, Any], key: str) -> None:
        """A child was set up with ``config``: it is the current configuration now."""
        if key != self._setup_key:
            self.setup, self._setup_key = dict(config), key

    async def restart(self) -> None:
        """Restart every replica now: a failed one is tried again at once (with a
        fresh restart budget), a running one gets a fresh child once its requests
        are done."""
        if self._stopped:
            raise errors.AppStoppedError(f"{self.name} is stopped")
        async with anyio.create_task_group() as tasks:
            for replica in self.replicas:
                tasks.start_soon(replica.restart)

    def _dispatch(self, request: Request) -> tuple[Replica, RunningChild] | None:
        """The one way in for a request: the replica and child that take it at once (the
        caller then runs ``replica.serve(request, child)``), or None when it was queued.

        A replica takes it at once only when no request waits before it. The search
        starts one replica further each time, so that calls made one after the other
        take turns over the replicas, as queued ones do.
        """
        if not len(self._queue):
            count = len(self.replicas)
            self._turn = (self._turn + 1) % count
            for i in range(count):
                replica = self.replicas[(self._turn + i) % count]
                child = replica.try_take(request)
                if child is not None:
                    self._requests[request.id] = request
                    return replica, child
        try:
            self._queue.put(request)
        except anyio.WouldBlock:
            raise errors.BusyError(
                f"{self.name}: the queue is full ({self._queue.max_size:g} waiting)"
            ) from None
        except anyio.ClosedResourceError:
            raise errors.AppStoppedError(f"{self.name} is stopped") from None
        self._requests[request.id] = request
        return None

    def _forget_request(self, request: Request) -> None:
        if self._requests.get(request.id) is request:
            del self._requests[request.id]

    async def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request; False if it is unknown or already over."""
        request = self._requests.get(request_id)
        if request is None or request.finished:
            return False
        if request.started is None:
            request.fail(errors.RequestCancelledError("the request was cancelled while queued"))
            return True
        for replica in self.replicas:
            await replica.cancel(request)
        return True

    def status(self) -> dict[str, Any]:
        replicas = [replica.status() for replica in self.replicas]
        states = {s["state"] for s in replicas}
        ready = any(s in ("ready", "busy") for s in states)
        return {
            "name": self.name,
            "app_dir": str(self.app_dir),
            "state": _overall(states),
            "ready": ready,
            "available": ready or any(s["evicted"] for s in replicas),
            "pids": [s["pid"] for s in replicas if s["pid"] is not None],
            "restarts": sum(s["restarts"] for s in replicas),
            "restarts_by_reason": dict(
                sum((Counter(s["restarts_by_reason"]) for s in replicas), Counter())
            ),
            "evictions": sum(s["evictions"] for s in replicas),
            "last_exit": next((s["last_exit"] for s in replicas if s["last_exit"]), None),
            "gpus": sorted({g for s in replicas for g in s["gpus"]}),
            "uptime": time.monotonic() - self.started_at,
            "cold_start": self.cold_start,
            "queued": len(self._queue),
            "environment": self.environment,
            "warnings": list(self.warnings),
            "replicas": replicas,
        }

    async def stop(self) -> None:
        """Stop taking requests, unload every child (with a deadline) and kill the rest."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.close()
        for request in list(self._requests.values()):
            request.fail(errors.AppStoppedError(f"{self.name} was stopped"))
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tasks:
                for replica in self.replicas:
                    tasks.start_soon(replica.stop)
        self._scope.cancel()
        if self._on_stop is not None:
            self._on_stop(self)

    # -- wiring ---------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run every replica until the app is stopped; owned by the supervisor's task group."""
        with self._scope:
            async with anyio.create_task_group() as tasks:
                for replica in self.replicas:
                    await tasks.start(replica.run, self._queue)
                task_status.started()


def _overall(states: set[str]) -> str:
    for state in ("ready", "busy", "setting_up", "starting", "restarting", "unloaded", "failed"):
        if state in states:
            return state
    return "stopped" if states else "unloaded"
