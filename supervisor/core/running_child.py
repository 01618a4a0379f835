"""One running child of a replica, from its spawn to its reaping: one state table.

A ``RunningChild`` is everything the supervisor knows about one child process:
its state, the requests in flight on it, its heartbeat, and why it was killed.
Its states and the moves between them are listed in ``TRANSITIONS`` and nowhere
else; every move is logged, and a move the table does not list raises
``IllegalTransition`` naming both states:

    STARTING --set up--> SERVING <--a drain ends / begins--> DRAINING
    STARTING --loaded as a spare--> STANDBY --taken by a start--> STARTING
    STARTING, STANDBY, SERVING, DRAINING --retire--> RETIRING
    any state but DEAD --kill--> KILLED
    any state --reaped--> DEAD

``refusal(key)`` is the one answer to "can this child take a request with these
setup values now?" (None: it can). ``kill`` records the reason and whose fault
it was (``Fault``): that is what its requests are told when it dies under them,
and only the app's faults count towards the replica's restart limit.

Running a request on it is ``enter`` (count it, route its messages), ``send``,
``follow`` (to its result, its error, its timeout or the child's death) and
``leave``; ``cancel`` asks the child to cancel a request and kills the child if
it has not let go of it after a grace, the same way a timeout does. Keeping a
replica's children alive, and deciding what follows a death, is the replica's
job (``replica.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc

from protocol import Cancel, Error, Message, ProtocolError, Result, Run

from .. import errors
from ..events import event_for
from ..process.child_channel import ChildChannel
from ..process.child_process import ChildProcess, ExitStatus
from .lifecycle import IllegalTransition
from .request import Request

SUSPECT_AFTER = 1.0
"""Seconds a pong may take before the child takes no new request: a live child
answers in well under a millisecond, a busy one within its liveness tick."""


class ChildState(enum.Enum):
    STARTING = "starting"
    """Spawned (or taken from the pool, or a standby being set up); not serving yet."""
    STANDBY = "standby"
    """The app loaded, not set up: a spare for the replica's next start."""
    SERVING = "serving"
    """Set up, the replica's current child: takes requests."""
    DRAINING = "draining"
    """Takes no new request until its requests are done (new setup values, or an
    operator's restart, wait for that)."""
    RETIRING = "retiring"
    """Being stopped on purpose: its death is not a crash."""
    KILLED = "killed"
    """Killed for a reason (``RunningChild.killed``), not reaped yet."""
    DEAD = "dead"
    """Reaped."""

    __hash__ = object.__hash__
    """Members are singletons compared by identity; Enum's own hash is Python code."""


TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    ChildState.STARTING: frozenset(
        {
            ChildState.STANDBY,
            ChildState.SERVING,
            ChildState.RETIRING,
            ChildState.KILLED,
            ChildState.DEAD,
        }
    ),
    ChildState.STANDBY: frozenset(
        {ChildState.STARTING, ChildState.RETIRING, ChildState.KILLED, ChildState.DEAD}
    ),
    ChildState.SERVING: frozenset(
        {ChildState.DRAINING, ChildState.RETIRING, ChildState.KILLED, ChildState.DEAD}
    ),
    ChildState.DRAINING: frozenset(
        {ChildState.SERVING, ChildState.RETIRING, ChildState.KILLED, ChildState.DEAD}
    ),
    ChildState.RETIRING: frozenset({ChildState.KILLED, ChildState.DEAD}),
    ChildState.KILLED: frozenset({ChildState.DEAD}),
    ChildState.DEAD: frozenset(),
}
GOING = frozenset({ChildState.RETIRING, ChildState.KILLED, ChildState.DEAD})
"""States from which a child only goes on to its death."""


class Fault(enum.Enum):
    """Whose fault a kill was. Only the app's count towards the restart limit, or a
    client could fail an app at will."""

    APP = "app"
    """It hung, broke the protocol, or crashed."""
    CALLER = "caller"
    """A request's cancel or timeout that the child did not honour in time."""
    LIMITS = "limits"
    """The supervisor's limits: a memory budget, the GPU running out of memory."""


@dataclass(frozen=True)
class Kill:
    """Why a child is being killed, and whom to blame for it."""

    reason: errors.SupervisorError
    """What its requests are told."""
    fault: Fault
    culprit: str | None = None
    """The request whose timeout or cancel got the child killed."""


class Refusal(enum.Enum):
    """Why a child cannot take a request now (``RunningChild.refusal``)."""

    NOT_SERVING = "not_serving"
    """Starting, a standby, or on its way out: wait for its end or for a start."""
    SUSPECT = "suspect"
    """Its heartbeat waits for a pong: wait for the verdict."""
    DRAINING = "draining"
    OTHER_SETUP = "other_setup"
    """Set up with other values."""


class Delivery(enum.Enum):
    """What became of sending a request to the child."""

    SENT = "sent"
    REFUSED = "refused"
    """The request ended without being sent (its input could not be encoded, or it
    was cancelled while its child was dying)."""
    UNDELIVERED = "undelivered"
    """The child was already gone: running it on the next child is safe."""


@dataclass(frozen=True)
class ChildLimits:
    """The replica's deadlines that apply to a child's requests and to its kill."""

    run_timeout: float | None = None
    cancel_grace: float = 5.0
    kill_grace: float = 2.0


@dataclass(eq=False)
class InFlight:
    """A request on this child, and its terminal message (None: the channel closed
    first), set once by the channel's handler and awaited by whoever follows it."""

    request: Request
    message: Message | None = None
    ended: bool = False
    # An asyncio event: it is set from the transport's callback, outside any task.
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, message: Message | None) -> None:
        if not self.ended:
            self.ended, self.message = True, message
            self._event.set()

    async def wait(self) -> Message | None:
        if not self.ended:
            await self._event.wait()
        return self.message


class RunningChild:
    def __init__(
        self,
        process: ChildProcess,
        channel: ChildChannel,
        config: dict[str, Any],
        config_key: str,
        *,
        tasks: anyio.abc.TaskGroup,
        name: str = "child",
        limits: ChildLimits | None = None,
        metadata: Mapping[str, Any] | None = None,
        load_env: dict[str, str] | None = None,
        on_busy: Callable[[bool], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``tasks``: where its kill and its cancels' deadlines run (the replica's).
        ``metadata``: sent with every request. ``on_busy(busy)``: called as a request
        enters (True) and as the last one leaves (False)."""
        self.process = process
        self.channel = channel
        self.config = config
        self.config_key = config_key
        self.name = name
        self.limits = limits or ChildLimits()
        self.metadata = dict(metadata or {})
        self.load_env = load_env or {}
        """The environment its ``load`` installs: a pooled child's becomes the app's."""
        self.logger = logger or logging.getLogger("supervisor.child")
        self.state = ChildState.STARTING
        self.started_at = time.monotonic()
        self.last_used = self.started_at
        self.in_flight: dict[str, InFlight] = {}
        self.killed: Kill | None = None
        self.unanswered_since: float | None = None
        """When the heartbeat ping now waiting for its pong was sent."""
        self._tasks = tasks
        self._on_busy = on_busy
        self._dead = anyio.Event()
        self._idle: asyncio.Event | None = None
        self._heard: anyio.Event | None = None

    # -- the state table ------------------------------------------------------------

    def to(self, state: ChildState, reason: str = "") -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(
                f"{self.name} pid {self.process.pid}: {self.state.value} -> {state.value}"
                + (f" ({reason})" if reason else "")
            )
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "%s: child pid %d %s -> %s%s",
                self.name,
                self.process.pid,
                self.state.value,
                state.value,
                f" ({reason})" if reason else "",
            )
        self.state = state
        if state is ChildState.DEAD:
            self._dead.set()

    @property
    def dead(self) -> bool:
        return self.state is ChildState.DEAD

    async def wait_dead(self) -> None:
        await self._dead.wait()

    @property
    def suspect(self) -> bool:
        """A heartbeat has waited more than ``SUSPECT_AFTER`` seconds for its pong: no
        new request goes to the child until it answers or is killed for it."""
        since = self.unanswered_since
        return since is not None and time.monotonic() - since > SUSPECT_AFTER

    def refusal(self, key: str) -> Refusal | None:
        """Why the child cannot take a request with setup values ``key`` now; None
        when it can. The one place that decides it."""
        state = self.state
        if state is ChildState.DRAINING:
            return Refusal.DRAINING
        if state is not ChildState.SERVING:
            return Refusal.NOT_SERVING
        if self.suspect:
            return Refusal.SUSPECT
        if key != self.config_key:
            return Refusal.OTHER_SETUP
        return None

    # -- moves the replica orders -----------------------------------------------------

    def serve(self) -> None:
        """Set up and now the replica's current child."""
        self.to(ChildState.SERVING)

    def stand_by(self) -> None:
        self.to(ChildState.STANDBY)

    def take_standby(self, config: dict[str, Any], key: str) -> bool:
        """Make a standby this start's child, set up with ``config``; False when it
        is no longer a live standby."""
        if self.state is not ChildState.STANDBY or self.channel.closed.is_set():
            return False
        self.config, self.config_key, self.started_at = config, key, time.monotonic()
        self.to(ChildState.STARTING, "taken from standby")
        return True

    def retire(self) -> None:
        """Mark the child as stopped on purpose (its death is no crash); the caller
        stops it."""
        if self.state not in GOING:
            self.to(ChildState.RETIRING)

    def kill(
        self,
        reason: errors.SupervisorError,
        fault: Fault,
        culprit: str | None = None,
        *,
        at_once: bool = False,
    ) -> bool:
        """Kill the child for a reason its requests will be told: terminate it (SIGKILL
        after the kill grace), or SIGKILL it ``at_once``. False when it is already
        killed or dead; its first kill's reason stands."""
        if self.state in (ChildState.KILLED, ChildState.DEAD):
            return False
        self.killed = Kill(reason, fault, culprit)
        self.to(ChildState.KILLED, reason.message)
        if at_once:
            self.process.kill()
        else:
            self._tasks.start_soon(self.process.terminate, self.limits.kill_grace)
        return True

    async def drain(self) -> None:
        """Take no new request until the child's requests are done; then serve again,
        unless something else (a kill, a death) came meanwhile."""
        self.to(ChildState.DRAINING)
        try:
            await self.wait_idle()
        finally:
            if self.state is ChildState.DRAINING:
                self.to(ChildState.SERVING)

    async def reaped(self) -> ExitStatus:
        """Wait for the child to end, reap it, and return how it exited.

        A child that broke the protocol is killed at once: whatever it says next
        cannot be trusted. One whose stdout closed gets the kill grace to exit.
        """
        await self.channel.closed.wait()
        violation = self.channel.protocol_error
        if violation is not None:
            self.kill(
                errors.ProtocolViolationError(f"the child broke the protocol: {violation}"),
                Fault.APP,
                at_once=True,
            )
        if self.process.exit_status is None:
            with anyio.move_on_after(self.limits.kill_grace, shield=True):
                await self.process.wait()
            if self.process.exit_status is None:
                self.process.kill()
        status = await self.process.wait()
        self.process.close_pipes()
        self.to(ChildState.DEAD, status.describe())
        return status

    # -- liveness ---------------------------------------------------------------------

    async def ping(self, timeout: float) -> bool:
        """Ping the child; True when it answered within ``timeout`` seconds."""
        self.unanswered_since = time.monotonic()
        heard = self._heard = anyio.Event()
        try:
            return await self.channel.ping(timeout)
        finally:
            self.unanswered_since = None
            heard.set()

    async def wait_heard(self) -> None:
        """Wait for the heartbeat now in flight to end (answered, or not in time)."""
        if self._heard is not None:
            await self._heard.wait()

    async def wait_idle(self) -> None:
        """Wait until no request is in flight on this child."""
        while self.in_flight:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

    # -- its requests -----------------------------------------------------------------

    def enter(self, request: Request) -> InFlight:
        """Count the request in the child's load and route its messages to it."""
        request.started = self.last_used = time.monotonic()
        entry = self.in_flight[request.id] = InFlight(request)
        if self._on_busy is not None:
            self._on_busy(True)
        self.channel.open_request(request.id, partial(self._on_message, entry))
        return entry

    def leave(self, entry: InFlight) -> None:
        """The child has let go of the request."""
        if self.in_flight.pop(entry.request.id, None) is None:
            return
        self.last_used = time.monotonic()
        if not self.in_flight:
            if self._idle is not None:  # made only when someone waits: most never do
                self._idle.set()
                self._idle = None
            if self._on_busy is not None:
                self._on_busy(False)

    async def send(self, entry: InFlight) -> Delivery:
        request = entry.request
        try:
            metadata = {**self.metadata, **request.metadata}
            await self.channel.send(Run(request.id, request.function, request.input, metadata))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.wait_dead()
            request.started = None  # it never started: a cancel from now on finds it queued
            if request.cancel_sent:  # asked to cancel while its child was dying
                request.fail(errors.RequestCancelledError("the request was cancelled"))
                return Delivery.REFUSED
            return Delivery.UNDELIVERED
        except TypeError as exc:
            request.fail(errors.InputValidationError(f"the input cannot be sent: {exc}"))
            return Delivery.REFUSED
        except ProtocolError as exc:
            request.fail(errors.ProtocolViolationError(f"the request cannot be sent: {exc}"))
            return Delivery.REFUSED
        return Delivery.SENT

    async def follow(self, entry: InFlight) -> None:
        """Wait for the request's end, asking the child to cancel it at its timeout
        (counted from its start, so that an adopted request keeps its deadline)."""
        request = entry.request
        timeout = request.timeout if request.timeout is not None else self.limits.run_timeout
        if timeout is None:
            terminal = await entry.wait()
        else:
            assert request.started is not None
            left = max(0.0, request.started + timeout - time.monotonic())
            with anyio.move_on_after(left) as scope:
                terminal = await entry.wait()
            if scope.cancelled_caught:
                error = errors.RequestTimeoutError(
                    f"{request.function!r} did not finish within {timeout:g} s"
                )
                terminal = await self._cancel_or_kill(entry, error)
                if not isinstance(terminal, Result):
                    request.fail(error)
                    return
        await self._conclude(entry, terminal)

    async def cancel(self, request_id: str) -> bool:
        """Ask the child to cancel a request and kill it if it has not let go of the
        request after the cancel grace (in the background). False if it is not here."""
        entry = self.in_flight.get(request_id)
        if entry is None:
            return False
        await self._send_cancel(entry.request)
        error = errors.RequestCancelledError("the request was cancelled")
        self._tasks.start_soon(self._cancel_or_kill, entry, error)
        return True

    async def _cancel_or_kill(
        self, entry: InFlight, error: errors.SupervisorError
    ) -> Message | None:
        """Cancel, then kill after a grace: the request's terminal message, or None
        when it did not end in time (and the child was killed for it, with ``error``)."""
        await self._send_cancel(entry.request)
        with anyio.move_on_after(self.limits.cancel_grace):
            return await entry.wait()
        if not self.dead:
            self.logger.warning(
                "%s: request %s ignored its cancel for %.1f s; killing pid %d",
                self.name,
                entry.request.id,
                self.limits.cancel_grace,
                self.process.pid,
            )
            self.kill(error, Fault.CALLER, culprit=entry.request.id)
        return None

    async def _send_cancel(self, request: Request) -> None:
        if request.cancel_sent:
            return
        request.cancel_sent = True
        with contextlib.suppress(
            anyio.BrokenResourceError, anyio.ClosedResourceError, ProtocolError
        ):
            await self.channel.send(Cancel(request.id))

    def _on_message(self, entry: InFlight, message: Message | None) -> None:
        """The channel's handler for one request's messages (see ``ChildChannel``):
        events go to the caller as they come; a result is handed over here, the
        request let go of first, so that the caller sees the child free when it has it."""
        if isinstance(message, Result):
            self.leave(entry)
            entry.request.succeed(message.output)
        elif message is not None and not isinstance(message, Error):
            event = event_for(entry.request.id, message)
            if event is not None:
                entry.request.emit(event)
            return
        entry.end(message)

    async def _conclude(self, entry: InFlight, terminal: Message | None) -> None:
        request = entry.request
        if isinstance(terminal, Result):
            return  # the channel's handler has already handed it over
        if isinstance(terminal, Error):
            error = errors.from_error_info(terminal.error)
            killed = self.killed
            if (
                isinstance(error, errors.RequestCancelledError)
                and killed is not None
                and killed.culprit == request.id
            ):
                error = killed.reason
            request.fail(error)
            if isinstance(error, errors.OutOfMemoryError):
                self.kill(
                    errors.ChildCrashedError("restarted after running out of GPU memory"),
                    Fault.LIMITS,
                )
        elif not request.finished:
            await self.wait_dead()
            request.fail(self.death_error(request))

    def death_error(self, request: Request) -> errors.SupervisorError:
        """What a request that was running on the child when it died is told."""
        status = self.process.exit_status
        details: dict[str, Any] = status.to_dict() if status else {}
        if self.process.stderr_tail:
            details["stderr"] = "\n".join(self.process.stderr_tail)
        killed = self.killed
        if killed is not None:
            reason = killed.reason
            if killed.culprit == request.id or killed.culprit is None:
                return type(reason)(reason.message, **{**details, **reason.details})
            return errors.ChildCrashedError(
                f"the child was killed while running this request: {reason.message}", **details
            )
        if self.channel.fatal_error is not None:
            return errors.ProtocolViolationError(self.channel.fatal_error.error.message, **details)
        if status is not None and status.memory_limit is not None:
            return errors.BudgetExceededError(  # the kernel enforced the RAM budget (a cgroup)
                f"the child reached its RAM budget of {status.memory_limit} bytes (a hard "
                f"limit) while running {request.function!r} and was killed",
                **details,
                budget="ram",
                used=status.memory_limit,
                limit=status.memory_limit,
            )
        what = status.describe() if status else "died"
        return errors.ChildCrashedError(
            f"the child {what} while running {request.function!r}", **details
        )
