"""When to restart a crashed child, and when to give up: a pure decision.

The policy sees only the times of recent crashes. The first crash in a quiet
window restarts at once (recovery should cost no more than a cold start); each
further crash within ``window`` seconds doubles the delay, up to ``max_delay``;
more than ``max_restarts`` crashes within the window means the app is broken and
the supervisor gives up (the app becomes ``failed``) for ``cooldown`` seconds,
after which it is tried again with a fresh budget: a broken dependency (a
model server, a disk) may have come back. Crashes older than the window are
forgotten, which is how a child that ran well for a while earns a fresh budget.

Only faults are crashes: an exit the supervisor did not order (a crash, the
kernel's OOM killer, a hung or lying child). A kill the supervisor orders (for
a cancel, a timeout, a budget, an eviction, a new config) is not the app's
fault and is never counted, or a client could fail an app at will.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Restart:
    """The policy's answer: start the child again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True)
class GiveUp:
    """The policy's answer: stop restarting (the app crashes too often)."""

    reason: str
    retry_after: float
    """Seconds until the app is tried again."""


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a crashed child: backoff, and a crash budget per window."""

    max_restarts: int = 5
    window: float = 60.0
    first_delay: float = 0.0
    base_delay: float = 0.1
    max_delay: float = 10.0
    cooldown: float = 60.0
    """Seconds a failed app waits before it is tried again."""

    def decide(self, crash_times: Sequence[float], now: float) -> Restart | GiveUp:
        """``crash_times`` includes the crash being decided on."""
        recent = [t for t in crash_times if now - t <= self.window]
        if len(recent) > self.max_restarts:
            return GiveUp(
                f"{len(recent)} crashes within {self.window:g} s "
                f"(the limit is {self.max_restarts} restarts)",
                self.cooldown,
            )
        if len(recent) <= 1:
            return Restart(self.first_delay)
        return Restart(min(self.max_delay, self.base_delay * 2 ** (len(recent) - 2)))

    def prune(self, crash_times: list[float], now: float) -> list[float]:
        return [t for t in crash_times if now - t <= self.window]

    def after_exit(
        self, crash_times: Sequence[float], now: float, *, fault: bool
    ) -> tuple[list[float], Restart | GiveUp]:
        """What follows a child's exit at ``now``, and the crash history to keep.

        A fault is recorded and decided on (``decide``); an exit the supervisor
        ordered restarts at once and leaves the history as it was.
        """
        if not fault:
            return list(crash_times), Restart(0.0)
        history = self.prune([*crash_times, now], now)
        return history, self.decide(history, now)
