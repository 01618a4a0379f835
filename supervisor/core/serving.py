"""Serving requests on a replica: its capacity, and each request run to its end.

A replica serves at most ``max_concurrency`` requests at once. Requests reach it
two ways, and both run ``serve``: ``take_from`` takes them from the app's queue
while there is capacity, in the replica's tasks; ``try_take`` lets a caller that
finds the replica free take capacity and a child at once and run ``serve``
itself (``App``). ``serve`` runs a request on a child to its end and gives its
share of the capacity back only once the child has let it go (a caller that
goes away leaves its request to the replica's tasks); a request that never
reached a child, because the child was already gone, is run on the next one.

Which child takes a request, and starting one, is the replica's
(``ChildSource``): serving only counts, sends, follows and retries.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import anyio
import anyio.abc

from .. import errors
from .request import Request
from .request_queue import RequestQueue
from .running_child import Delivery, InFlight, RunningChild

UNDELIVERED_RETRIES = 3
"""How often a request whose child died before it could be sent moves to the next child."""


class ChildSource(Protocol):
    """What serving needs of the replica (``Replica``)."""

    name: str
    logger: logging.Logger

    @property
    def tasks(self) -> anyio.abc.TaskGroup:
        """The replica's tasks, which follow requests whose caller went away."""
        ...

    def child_for(self, key: str) -> RunningChild | None:
        """The child that can take a request with setup values ``key`` now, if any."""
        ...

    async def ensure(self, config: dict[str, Any], key: str | None = None) -> RunningChild:
        """A ready child set up with ``config``, started if need be."""
        ...


class Serving:
    """A replica's capacity (``max_concurrency``) and the requests it runs."""

    def __init__(self, replica: ChildSource, max_concurrency: int) -> None:
        self._replica = replica
        self._max_concurrency = max_concurrency
        # fast_acquire: an uncontended acquire costs no trip through the event loop.
        self._capacity = anyio.Semaphore(max_concurrency, fast_acquire=True)

    async def take_from(self, queue: RequestQueue) -> None:
        """Take requests while there is capacity, until the queue closes."""
        while await queue.wait():
            await self._capacity.acquire()
            request = queue.take()
            if request is None:  # another replica, or a caller, was first
                self._capacity.release()
            elif self._max_concurrency == 1:
                await self.serve(request)  # nothing else can run here meanwhile
            else:
                self._replica.tasks.start_soon(self.serve, request)

    def try_take(self, request: Request) -> RunningChild | None:
        """The child to run ``request`` on at once, with capacity taken for it (to be
        given to ``serve``); None when the replica has no child that can take it now, or
        no room."""
        child = self._replica.child_for(request.config_key)
        if child is None:
            return None
        try:
            self._capacity.acquire_nowait()
        except anyio.WouldBlock:
            return None
        return child

    async def serve(self, request: Request, child: RunningChild | None = None) -> None:
        """Run a request, for which capacity was taken, to its end: on ``child`` (from
        ``try_take``), or on the child ``ensure`` gives. Whatever goes wrong is the
        request's own failure, never the caller's task's.

        If the task running this is cancelled while the child has the request, the
        replica's tasks adopt it: the capacity is given back only once the child has
        let the request go.
        """
        adopted = False
        try:
            for _ in range(UNDELIVERED_RETRIES + 1):
                if child is None:
                    try:
                        child = await self._replica.ensure(request.config, request.config_key)
                    except errors.SupervisorError as exc:
                        request.fail(exc)
                        return
                if request.finished:
                    return
                entry = child.enter(request)
                delivery: Delivery | None = None
                try:
                    delivery = await child.send(entry)
                    if delivery is Delivery.SENT:
                        await child.follow(entry)
                except anyio.get_cancelled_exc_class():
                    if delivery is Delivery.SENT and request.id in child.in_flight:
                        adopted = self._adopt(child, entry)
                    if not adopted:  # it never reached the child, or nothing can follow it
                        request.fail(errors.RequestCancelledError("the request was cancelled"))
                    raise
                finally:
                    if not adopted:
                        child.leave(entry)
                if delivery is not Delivery.UNDELIVERED:
                    return
                self._replica.logger.info(
                    "%s: request %s never reached its child; retrying",
                    self._replica.name,
                    request.id,
                )
                child = None
            request.fail(
                errors.ChildCrashedError("the request could not be delivered to a live child")
            )
        except Exception as exc:
            self._replica.logger.exception("%s: request %s failed", self._replica.name, request.id)
            request.fail(errors.InternalError(f"the request failed inside the supervisor: {exc!r}"))
        finally:
            if not adopted:
                self._capacity.release()

    def _adopt(self, child: RunningChild, entry: InFlight) -> bool:
        """Let the replica's tasks follow a request to its end; False when they are gone
        (the app has stopped), and nothing is left to wait for."""

        async def follow() -> None:
            try:
                await child.follow(entry)
            finally:
                child.leave(entry)
                self._capacity.release()

        try:
            self._replica.tasks.start_soon(follow)
        except RuntimeError:  # not active any more
            return False
        return True
