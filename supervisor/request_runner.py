"""Running requests on a slot's child: the request half of a replica.

``take_from`` takes requests from the app's queue while the slot has capacity
(``max_concurrency``); each request is sent to the slot's ready child and its
events are relayed to the caller until its result, its error, its timeout or the
child's death. What the caller is told when the child dies is decided here,
from why it died (``LiveChild.kill_reason``). A request that never reached a
child, because the child was already gone, is run on the next one. Keeping a
child alive is the slot's business (``slot.py``).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from protocol import Cancel, Error, Message, ProtocolError, Result, Run
from protocol import Log as LogMessage
from protocol import Partial as PartialMessage
from protocol import Progress as ProgressMessage

from . import errors as E
from .child_channel import Inbox
from .events import LogEvent, PartialEvent, ProgressEvent
from .lifecycle import ChildState
from .request import Request

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

    async def take_from(self, queue: MemoryObjectReceiveStream[Request]) -> None:
        """Take requests while there is capacity, until the queue closes."""
        while True:
            await self._capacity.acquire()
            try:
                request = queue.receive_nowait()
            except anyio.WouldBlock:
                try:
                    request = await queue.receive()
                except anyio.EndOfStream:
                    self._capacity.release()
                    return
            except anyio.EndOfStream:
                self._capacity.release()
                return
            if request.finished:
                self._capacity.release()
            elif self.slot.spec.max_concurrency == 1:
                await self._serve(request)  # nothing else can run here meanwhile
            else:
                self.slot.tasks.start_soon(self._serve, request)

    async def _serve(self, request: Request) -> None:
        try:
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
        finally:
            self._capacity.release()

    async def execute(self, request: Request, child: LiveChild) -> bool:
        """Run a request on a child. False means it never reached the child (the child
        was already gone), so running it on the next child is safe."""
        request.started = child.last_used = time.monotonic()
        if not child.in_flight:
            child.idle = anyio.Event()
        child.in_flight[request.id] = request
        if self.slot.lifecycle.state is S.READY:
            self.slot.lifecycle.to(S.BUSY)
        inbox = child.channel.open_request(
            request.id, lambda output: self._succeed_now(request, child, output)
        )
        try:
            try:
                await child.channel.send(
                    Run(request.id, request.function, request.input, self._run_metadata(request))
                )
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                await child.dead.wait()
                return False
            except TypeError as exc:
                request.fail(E.InputValidationError(f"the input cannot be sent: {exc}"))
                return True
            except ProtocolError as exc:
                request.fail(E.ProtocolViolationError(f"the request cannot be sent: {exc}"))
                return True
            timeout = request.timeout if request.timeout is not None else self.slot.spec.run_timeout
            if timeout is None:
                terminal = await self._pump(request, inbox)
            else:
                with anyio.move_on_after(timeout) as scope:
                    terminal = await self._pump(request, inbox)
                if scope.cancelled_caught:
                    terminal = await self._time_out(request, child, inbox, timeout)
            await self._conclude(request, child, terminal)
            return True
        finally:
            self._leave(request, child)

    def _succeed_now(self, request: Request, child: LiveChild, output: Any) -> None:
        """The channel's shortcut for a result: the caller has it one task switch
        sooner, and sees the child ready again when it does."""
        self._leave(request, child)
        request.succeed(output)

    def _leave(self, request: Request, child: LiveChild) -> None:
        if child.in_flight.pop(request.id, None) is None:
            return
        child.last_used = time.monotonic()
        if not child.in_flight:
            child.idle.set()
            if self.slot.lifecycle.state is S.BUSY:
                self.slot.lifecycle.to(S.READY)

    def _run_metadata(self, request: Request) -> dict[str, Any]:
        return {**self.slot.metadata(), **request.metadata}

    async def _pump(self, request: Request, inbox: Inbox) -> Message | None:
        """Deliver a request's events to its caller; return its terminal message,
        or None when the child died first."""
        while True:
            try:
                message = inbox.receive_nowait()  # no extra loop turn when one is waiting
            except anyio.WouldBlock:
                try:
                    message = await inbox.receive()
                except anyio.EndOfStream:
                    return None
            except anyio.EndOfStream:
                return None
            if isinstance(message, (Result, Error)):
                return message
            if isinstance(message, LogMessage):
                request.emit(LogEvent(request.id, message.stream, message.message))
            elif isinstance(message, ProgressMessage):
                request.emit(
                    ProgressEvent(
                        request.id,
                        message.fraction,
                        message.current,
                        message.total,
                        message.message,
                    )
                )
            elif isinstance(message, PartialMessage):
                request.emit(PartialEvent(request.id, message.output))

    async def _time_out(
        self, request: Request, child: LiveChild, inbox: Inbox, timeout: float
    ) -> Message | None:
        """Ask the child to cancel a request that ran too long; kill it if it will not."""
        error = E.RequestTimeoutError(f"{request.function!r} did not finish within {timeout:g} s")
        await self._send_cancel(request, child)
        terminal = None
        with anyio.move_on_after(self.slot.spec.cancel_grace):
            terminal = await self._pump(request, inbox)
        if isinstance(terminal, Result):
            return terminal
        if terminal is None and not child.dead.is_set():
            self._kill_for_ignoring_cancel(request, child, error)
        request.fail(error)
        return None

    async def _send_cancel(self, request: Request, child: LiveChild) -> None:
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
            request.succeed(terminal.output)  # unless the channel has already done it
        elif isinstance(terminal, Error):
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
        what = status.describe() if status else "died"
        return E.ChildCrashedError(
            f"the child {what} while running {request.function!r}", **details
        )

    async def cancel(self, request: Request) -> None:
        child = self.slot.child
        if child is None or request.id not in child.in_flight:
            return
        request.cancel_requested = True
        await self._ask_to_cancel(
            request, child, E.RequestCancelledError("the request was cancelled")
        )
