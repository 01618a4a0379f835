"""The lifecycle of one replica slot, as an explicit state machine.

A slot holds at most one child process at a time and replaces it when it
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


_S = ReplicaState
TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    _S.UNLOADED: frozenset({_S.STARTING, _S.STOPPING}),
    _S.STARTING: frozenset({_S.SETTING_UP, _S.RESTARTING, _S.UNLOADED, _S.FAILED, _S.STOPPING}),
    _S.SETTING_UP: frozenset({_S.READY, _S.RESTARTING, _S.UNLOADED, _S.FAILED, _S.STOPPING}),
    _S.READY: frozenset({_S.BUSY, _S.RESTARTING, _S.UNLOADED, _S.STOPPING}),
    _S.BUSY: frozenset({_S.READY, _S.RESTARTING, _S.UNLOADED, _S.STOPPING}),
    _S.RESTARTING: frozenset({_S.STARTING, _S.FAILED, _S.STOPPING}),
    _S.FAILED: frozenset({_S.RESTARTING, _S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.STOPPED: frozenset(),
}
LIVE = frozenset({_S.STARTING, _S.SETTING_UP, _S.READY, _S.BUSY})
"""States in which a child process exists."""


class IllegalTransition(RuntimeError):
    pass


@dataclass
class Lifecycle:
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
        quiet = (self.state is _S.READY and state is _S.BUSY) or (
            self.state is _S.BUSY and state is _S.READY
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
