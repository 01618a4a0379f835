"""The lifecycle of one replica, as an explicit state machine.

A replica holds at most one child process at a time and replaces it when it
crashes, when its configuration changes, or when it is evicted. Every state and
every allowed transition is listed here; each transition is logged with its
reason, and a transition the table does not allow is a bug that raises.

    UNLOADED ──start──> STARTING ──hello+load──> SETTING_UP ──setup ok──> READY <──> BUSY
        ^                   │                        │                      │
        └─ setup failed, ───┴──── crash ────> RESTARTING <───── crash ──────┘
           config change,         (back-off)      │  gave up       │
           eviction                               └──> FAILED ─────┘
                                          (after the cool-down, or an operator's restart)
    any state ──stop──> STOPPING ──> STOPPED

A kill the supervisor orders (cancel, timeout, budget, out of memory) goes
through RESTARTING too, but only faults count towards giving up.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field


class ReplicaState(enum.Enum):
    UNLOADED = "unloaded"
    STARTING = "starting"
    SETTING_UP = "setting_up"
    READY = "ready"
    BUSY = "busy"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"

    __hash__ = object.__hash__
    """Members are singletons compared by identity; Enum's own hash is Python code."""


TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.UNLOADED: frozenset({ReplicaState.STARTING, ReplicaState.STOPPING}),
    ReplicaState.STARTING: frozenset(
        {
            ReplicaState.SETTING_UP,
            ReplicaState.RESTARTING,
            ReplicaState.UNLOADED,
            ReplicaState.FAILED,
            ReplicaState.STOPPING,
        }
    ),
    ReplicaState.SETTING_UP: frozenset(
        {
            ReplicaState.READY,
            ReplicaState.RESTARTING,
            ReplicaState.UNLOADED,
            ReplicaState.FAILED,
            ReplicaState.STOPPING,
        }
    ),
    ReplicaState.READY: frozenset(
        {ReplicaState.BUSY, ReplicaState.RESTARTING, ReplicaState.UNLOADED, ReplicaState.STOPPING}
    ),
    ReplicaState.BUSY: frozenset(
        {ReplicaState.READY, ReplicaState.RESTARTING, ReplicaState.UNLOADED, ReplicaState.STOPPING}
    ),
    ReplicaState.RESTARTING: frozenset(
        {ReplicaState.STARTING, ReplicaState.FAILED, ReplicaState.STOPPING}
    ),
    ReplicaState.FAILED: frozenset({ReplicaState.RESTARTING, ReplicaState.STOPPING}),
    ReplicaState.STOPPING: frozenset({ReplicaState.STOPPED}),
    ReplicaState.STOPPED: frozenset(),
}
LIVE = frozenset(
    {ReplicaState.STARTING, ReplicaState.SETTING_UP, ReplicaState.READY, ReplicaState.BUSY}
)
"""States in which a child process exists."""


class IllegalTransition(RuntimeError):
    pass


@dataclass
class Lifecycle:
    """A replica's state, changed only through the transitions allowed above, each logged."""

    name: str
    state: ReplicaState = ReplicaState.UNLOADED
    since: float = field(default_factory=time.monotonic)
    reason: str = ""
    logger: logging.Logger = field(
        default_factory=lambda: logging.getLogger("supervisor.lifecycle")
    )

    def to(self, state: ReplicaState, reason: str = "") -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.name}: {self.state.value} -> {state.value} ({reason})")
        # Every request flips READY <-> BUSY: logged at DEBUG, formatted only when shown.
        quiet = (self.state is ReplicaState.READY and state is ReplicaState.BUSY) or (
            self.state is ReplicaState.BUSY and state is ReplicaState.READY
        )
        level = logging.DEBUG if quiet else logging.INFO
        if self.logger.isEnabledFor(level):
            self.logger.log(
                level,
                "%s: %s -> %s%s",
                self.name,
                self.state.value,
                state.value,
                f" ({reason})" if reason else "",
            )
        self.state = state
        self.since = time.monotonic()
        self.reason = reason


class VramClaim(enum.Enum):
    """Whether the app's VRAM budget is promised to a replica (admitted), and whether
    the replica gave it up to an eviction (it then starts again on its next request,
    so it still counts as available).

        HELD --evicted--> EVICTED --readmitted--> RETURNING --started--> HELD
        HELD, RETURNING --a start failed--> LOST --readmitted--> HELD
    """

    HELD = "held"
    """Admitted: from its app's admission until it is evicted or a start fails."""
    EVICTED = "evicted"
    """Unloaded to free GPU memory, not admitted; back on its next request."""
    RETURNING = "returning"
    """Admitted again after an eviction; its start is under way."""
    LOST = "lost"
    """Not admitted since a start failed (for another reason than room): the next
    start is admitted again, and it no longer counts as available."""

    __hash__ = object.__hash__

    @property
    def admitted(self) -> bool:
        return self in (VramClaim.HELD, VramClaim.RETURNING)

    @property
    def evicted(self) -> bool:
        return self in (VramClaim.EVICTED, VramClaim.RETURNING)


@dataclass(frozen=True)
class Failure:
    """Why a replica is ``FAILED``, and when it is tried again."""

    message: str
    limit: str
    """What gave out: ``restarts`` (too many faults in the policy's window) or
    ``load`` (the app cannot be imported)."""
    at: float
    """Wall-clock time of the failure."""
    retry_at: float | None
    """Wall-clock time at which it is tried again (None: not planned)."""
