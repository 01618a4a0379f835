"""Running requests on a slot's child: the request half of a replica.

``take_from`` takes requests from the app's queue while the slot has capacity
(``max_concurrency``); ``try_take`` and ``serve_here`` let a caller that finds
the slot free run its request in its own task instead (``App.run``). Either way
the request is sent to the slot's ready child and its events are relayed to the
caller until its result, its error, its timeout or the child's death, and its
share of the capacity is given back only when the child has let it go. What the
caller is told when the child dies is decided here, from why it died
(``LiveChild.kill_reason``). A request that never reached a child, because the
child was already gone, is run on the next one. Keeping a child alive is the
slot's business (``slot.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from protocol import Cancel, Error, Message, ProtocolError, Result, Run
from protocol import Log as LogMessage
from protocol import Partial as PartialMessage
from protocol import Progress as ProgressMessage

from . import errors as E
from .events import LogEvent, PartialEvent, ProgressEvent
from .lifecycle import ChildState
from .request import Request
from .request_queue import RequestQueue

if TYPE_CHECKING:
    from .slot import LiveChild, Slot

S = ChildState
UNDELIVERED_RETRIES = 3
"""How often a request whose child died before it could be sent moves to the next child."""


class RequestRunner:
    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        # fast_acquire: an uncontended acquire costs no trip through the event loop.
        self._capacity = anyio.Semaphore(slot.spec.max_concurrency, fast_acquire=True)
        self._queue: RequestQueue | None = None

    async def take_from(self, queue: RequestQueue) -> None:
        """Take requests while there is capacity, until the queue closes."""
        self._queue = queue
        while await queue.wait():
            await self._capacity.acquire()
            request = queue.take()
            if request is None:  # another slot, or a caller, was first
                self._capacity.release()
            elif self.slot.spec.max_concurrency == 1:
                await self._serve(request)  # nothing else can run here meanwhile
            else:
                self.slot.tasks.start_soon(self._serve, request)

    async def _serve(self, request: Request) -> None:
        """Run one queued request to its end. Whatever goes wrong with it is its own
        failure: an unexpected exception is logged and fails the request, never the
        slot's task (which would stop the app)."""
        try:
            await self._serve_on_a_child(request)
        except Exception as exc:
            self.slot.logger.exception("%s: request %s failed", self.slot.name, request.id)
            request.fail(E.InternalError(f"the request failed inside the supervisor: {exc!r}"))
        finally:
            self._capacity.release()

    async def _serve_on_a_child(self, request: Request) -> None:
        for _ in range(UNDELIVERED_RETRIES + 1):
            try:
                child = await self.slot.ensure(request.config, request.config_key)
            except E.SupervisorError as exc:
                request.fail(exc)
                return
            if request.finished or await self.execute(request, child):
                return
            self.slot.logger.info(
                "%s: request %s never reached its child; retrying", self.slot.name, request.id
            )
        request.fail(E.ChildCrashedError("the request could not be delivered to a live child"))

    def try_take(self, request: Request) -> LiveChild | None:
        """The child to run ``request`` on at once, with capacity taken for it; None
        when the slot has no ready child for its setup values, or no room."""
        child = self.slot.child
        if (
            child is None
            or self.slot.lifecycle.state not in (S.READY, S.BUSY)
            or child.config_key != request.config_key
            or child.kill_reason is not None
            or child.retiring
            or child.draining
            or child.suspect
            or child.dead.is_set()
        ):
            return None
        try:
            self._capacity.acquire_nowait()
        except anyio.WouldBlock:
            return None
        return child

    async def serve_here(self, request: Request, child: LiveChild) -> None:
        """Run a request taken with ``try_take`` in the current task: no hand-over to
        the slot's task and back, one turn of the event loop less per call.

        If the current task is cancelled while the child has the request, the
        slot's task group adopts it: the capacity is given back only once the
        child has let the request go. A request that never reached the child goes
        back to the head of the queue, for the next child.
        """
        ending = self._enter(request, child)
        delivered = adopted = False
        try:
            sent = await self._send_run(request, child)
            delivered = sent is _Sent.SENT
            if sent is _Sent.UNDELIVERED:
                if self._queue is None or self._queue.closed:
                    request.fail(E.AppStoppedError(f"{self.slot.spec.name} is stopped"))
                else:
                    self._queue.put_back(request)
            elif delivered:
                await self._follow(request, child, ending)
        except anyio.get_cancelled_exc_class():
            if delivered and request.id in child.in_flight:
                adopted = self._hand_to_slot(request, child, ending)
            if not adopted:  # it never reached the child, or nothing is left to follow it
                request.fail(E.RequestCancelledError("the request was cancelled"))
            raise
        finally:
            if not adopted:
                self._leave(request, child)
                self._capacity.release()

    def _hand_to_slot(self, request: Request, child: LiveChild, ending: _Ending) -> bool:
        """Let the slot's task group follow a request to its end; False when that
        group is gone (the app has stopped), and nothing is left to wait for."""
        try:
            self.slot.tasks.start_soon(self._adopt, request, child, ending)
        except RuntimeError:  # not active any more
            return False
        return True

    async def _adopt(self, request: Request, child: LiveChild, ending: _Ending) -> None:
        try:
            await self._follow(request, child, ending)
        finally:
            self._leave(request, child)
            self._capacity.release()

    async def execute(self, request: Request, child: LiveChild) -> bool:
        """Run a request on a child. False means it never reached the child (the child
        was already gone), so running it on the next child is safe."""
        ending = self._enter(request, child)
        try:
            sent = await self._send_run(request, child)
            if sent is _Sent.SENT:
                await self._follow(request, child, ending)
            return sent is not _Sent.UNDELIVERED
        finally:
            self._leave(request, child)

    def _enter(self, request: Request, child: LiveChild) -> _Ending:
        """Count the request in the child's load and route its messages to it."""
        request.started = child.last_used = time.monotonic()
        child.in_flight[request.id] = request
        if self.slot.lifecycle.state is S.READY:
            self.slot.lifecycle.to(S.BUSY)
        ending = _Ending()
        child.channel.open_request(request.id, partial(self._deliver, request, child, ending))
        return ending

    async def _send_run(self, request: Request, child: LiveChild) -> _Sent:
        try:
            await child.channel.send(
                Run(request.id, request.function, request.input, self._run_metadata(request))
            )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            await child.dead.wait()
            request.started = None  # it never started: a cancel from now on finds it queued
            if request.cancel_sent:  # asked to cancel while its child was dying
                request.fail(E.RequestCancelledError("the request was cancelled"))
                return _Sent.REFUSED
            return _Sent.UNDELIVERED
        except TypeError as exc:
            request.fail(E.InputValidationError(f"the input cannot be sent: {exc}"))
            return _Sent.REFUSED
        except ProtocolError as exc:
            request.fail(E.ProtocolViolationError(f"the request cannot be sent: {exc}"))
            return _Sent.REFUSED
        return _Sent.SENT

    async def _follow(self, request: Request, child: LiveChild, ending: _Ending) -> None:
        """Wait for the request's end, asking the child to cancel it at its timeout
        (counted from its start, so that an adopted request keeps its deadline)."""
        timeout = request.timeout if request.timeout is not None else self.slot.spec.run_timeout
        if timeout is None:
            terminal = await ending.wait()
        else:
            assert request.started is not None
            left = max(0.0, request.started + timeout - time.monotonic())
            with anyio.move_on_after(left) as scope:
                terminal = await ending.wait()
            if scope.cancelled_caught:
                terminal = await self._time_out(request, child, ending, timeout)
        await self._conclude(request, child, terminal)

    def _deliver(
        self, request: Request, child: LiveChild, ending: _Ending, message: Message | None
    ) -> None:
        """The channel's handler for one request's messages (see ``ChildChannel``):
        events go to the caller as they come; a result is handed over here, with the
        slot's bookkeeping, so that the caller sees the child ready when it has it."""
        if isinstance(message, LogMessage):
            request.emit(LogEvent(request.id, message.stream, message.message))
        elif isinstance(message, ProgressMessage):
            request.emit(
                ProgressEvent(
                    request.id, message.fraction, message.current, message.total, message.message
                )
            )
        elif isinstance(message, PartialMessage):
            request.emit(PartialEvent(request.id, message.output))
        else:
            if isinstance(message, Result):
                self._leave(request, child)
                request.succeed(message.output)
            ending.end(message)

    def _leave(self, request: Request, child: LiveChild) -> None:
        if child.in_flight.pop(request.id, None) is None:
            return
        child.last_used = time.monotonic()
        if not child.in_flight:
            child.became_idle()
            if self.slot.lifecycle.state is S.BUSY:
                self.slot.lifecycle.to(S.READY)

    def _run_metadata(self, request: Request) -> dict[str, Any]:
        return {**self.slot.metadata(), **request.metadata}

    async def _time_out(
        self, request: Request, child: LiveChild, ending: _Ending, timeout: float
    ) -> Message | None:
        """Ask the child to cancel a request that ran too long; kill it if it will not."""
        error = E.RequestTimeoutError(f"{request.function!r} did not finish within {timeout:g} s")
        await self._send_cancel(request, child)
        terminal = None
        with anyio.move_on_after(self.slot.spec.cancel_grace):
            terminal = await ending.wait()
        if isinstance(terminal, Result):
            return terminal
        if terminal is None and not child.dead.is_set():
            self._kill_for_ignoring_cancel(request, child, error)
        request.fail(error)
        return None

    async def _send_cancel(self, request: Request, child: LiveChild) -> None:
        if request.cancel_sent:
            return
        request.cancel_sent = True
        with contextlib.suppress(
            anyio.BrokenResourceError, anyio.ClosedResourceError, ProtocolError
        ):
            await child.channel.send(Cancel(request.id))

    async def _ask_to_cancel(
        self, request: Request, child: LiveChild, error: E.SupervisorError
    ) -> None:
        """Ask the child to cancel; kill it if the request is still there after the grace."""
        await self._send_cancel(request, child)

        async def enforce() -> None:
            with anyio.move_on_after(self.slot.spec.cancel_grace):
                await child.dead.wait()
                return
            if request.id in child.in_flight and not child.dead.is_set():
                self._kill_for_ignoring_cancel(request, child, error)

        self.slot.tasks.start_soon(enforce)

    def _kill_for_ignoring_cancel(
        self, request: Request, child: LiveChild, error: E.SupervisorError
    ) -> None:
        self.slot.logger.warning(
            "%s: request %s ignored its cancel for %.1f s; killing pid %d",
            self.slot.name,
            request.id,
            self.slot.spec.cancel_grace,
            child.process.pid,
        )
        self.slot.kill(child, error, culprit=request.id)

    async def _conclude(self, request: Request, child: LiveChild, terminal: Message | None) -> None:
        if isinstance(terminal, Result):
            return  # the channel's handler (``_deliver``) has already handed it over
        if isinstance(terminal, Error):
            error = E.from_error_info(terminal.error)
            if isinstance(error, E.RequestCancelledError) and child.culprit == request.id:
                error = child.kill_reason or error
            request.fail(error)
            if isinstance(error, E.OutOfMemoryError):
                self.slot.kill(
                    child, E.ChildCrashedError("restarted after running out of GPU memory")
                )
        elif not request.finished:
            await child.dead.wait()
            request.fail(self._death_error(child, request))

    def _death_error(self, child: LiveChild, request: Request) -> E.SupervisorError:
        status = child.process.exit_status
        details: dict[str, Any] = status.to_dict() if status else {}
        if child.process.stderr_tail:
            details["stderr"] = "\n".join(child.process.stderr_tail)
        reason = child.kill_reason
        if reason is not None:
            if child.culprit == request.id or child.culprit is None:
                return type(reason)(reason.message, **{**details, **reason.details})
            return E.ChildCrashedError(
                f"the child was killed while running this request: {reason.message}", **details
            )
        if child.channel.fatal_error is not None:
            return E.ProtocolViolationError(child.channel.fatal_error.error.message, **details)
        if status is not None and status.memory_limit is not None:
            return E.BudgetExceededError(  # the kernel enforced the RAM budget (a cgroup)
                f"the child reached its RAM budget of {status.memory_limit} bytes (a hard "
                f"limit) while running {request.function!r} and was killed",
                **details,
                budget="ram",
                used=status.memory_limit,
                limit=status.memory_limit,
            )
        what = status.describe() if status else "died"
        return E.ChildCrashedError(
            f"the child {what} while running {request.function!r}", **details
        )

    async def cancel(self, request: Request) -> None:
        child = self.slot.child
        if child is None or request.id not in child.in_flight:
            return
        await self._ask_to_cancel(
            request, child, E.RequestCancelledError("the request was cancelled")
        )


class _Sent(enum.Enum):
    SENT = "sent"
    REFUSED = "refused"
    """The request ended without being sent (its input could not be encoded, or it
    was cancelled while its child was dying)."""
    UNDELIVERED = "undelivered"
    """The child was already gone."""


class _Ending:
    """A request's terminal message (None: the channel closed first), set once by
    the channel's handler and awaited, possibly more than once, by the runner."""

    __slots__ = ("_ended", "_event", "message")

    def __init__(self) -> None:
        # An asyncio event: it is set from the transport's callback, outside any task.
        self._event = asyncio.Event()
        self._ended = False
        self.message: Message | None = None

    def end(self, message: Message | None) -> None:
        if not self._ended:
            self._ended, self.message = True, message
            self._event.set()

    async def wait(self) -> Message | None:
        if not self._ended:
            await self._event.wait()
        return self.message
