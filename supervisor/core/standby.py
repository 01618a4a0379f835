"""A replica's standby: a spare child with the app loaded and not set up.

The replica's next start sets the standby up instead of starting a child, so a
restart costs a setup, not a spawn and an import. Its states, and the moves
between them, are listed in ``TRANSITIONS`` and nowhere else:

    EMPTY --fill--> LOADING --loaded--> LOADED --taken by a start, died--> EMPTY
    LOADING --failed, cancelled--> EMPTY
    LOADING, LOADED --drop--> EMPTY (a loading one once its load gives up)

``fill`` loads one once a start is over, after a pause, so that it does not
compete with that start's first requests. A standby that fails to load, or
dies while loading, is not replaced until the replica's next start; one that
dies once loaded is replaced, once per start (``renew``): one that keeps dying
would otherwise cost a spawn and an import over and over.

How a child is made and stopped is the replica's (``make``, ``discard``): the
standby only decides when, and keeps the one it has.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..process.child_process import ExitStatus
from .lifecycle import IllegalTransition
from .running_child import RunningChild

STANDBY_DELAY = 0.05
"""Seconds between a start and loading the standby, as the pool waits to refill."""
REPLACEMENTS_PER_START = 1
"""How many standbys that died once loaded are replaced between two starts."""


class StandbyState(enum.Enum):
    EMPTY = "empty"
    """No standby, and none loading."""
    LOADING = "loading"
    """A child is being spawned and loaded for it."""
    LOADED = "loaded"
    """A child with the app loaded waits for the next start (``Standby.child``)."""

    __hash__ = object.__hash__
    """Members are singletons compared by identity; Enum's own hash is Python code."""


TRANSITIONS: dict[StandbyState, frozenset[StandbyState]] = {
    StandbyState.EMPTY: frozenset({StandbyState.LOADING}),
    StandbyState.LOADING: frozenset({StandbyState.LOADED, StandbyState.EMPTY}),
    StandbyState.LOADED: frozenset({StandbyState.EMPTY}),
}


class Standby:
    def __init__(
        self,
        name: str,
        make: Callable[[], Awaitable[RunningChild | None]],
        discard: Callable[[RunningChild | None], Awaitable[None]],
        wanted: Callable[[], bool],
        logger: logging.Logger,
    ) -> None:
        """``make()`` spawns a child and loads the app into it (None when that failed,
        or the replica stopped meanwhile: it has stopped the child); ``discard(child)``
        stops one that never served; ``wanted()``: whether the replica serves, and so
        needs a standby."""
        self.name = name
        self.state = StandbyState.EMPTY
        self.child: RunningChild | None = None
        """The loaded standby; None in any state but ``LOADED``."""
        self._make = make
        self._discard = discard
        self._wanted = wanted
        self._logger = logger
        self._scope = anyio.CancelScope()
        self._replacements = REPLACEMENTS_PER_START

    def _to(self, state: StandbyState) -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.name} standby: {self.state.value} -> {state.value}")
        self.state = state

    @property
    def pid(self) -> int | None:
        """The loaded standby's app pid, as the status shows it."""
        return self.child.process.app_pid if self.child is not None else None

    def renew(self) -> None:
        """The replica has started: a standby that dies from now on is replaced again."""
        self._replacements = REPLACEMENTS_PER_START

    async def fill(self) -> None:
        """Load a standby, unless there is one (or one loading), or it is not wanted."""
        await anyio.sleep(STANDBY_DELAY)
        if self.state is not StandbyState.EMPTY or not self._wanted():
            return
        self._to(StandbyState.LOADING)
        child: RunningChild | None = None
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                child = await self._make()
        except BaseException:
            self._to(StandbyState.EMPTY)
            raise
        if child is None or scope.cancel_called:  # failed, or dropped while loading
            self._to(StandbyState.EMPTY)
            await self._discard(child)
            return
        child.stand_by()
        self.child = child
        self._to(StandbyState.LOADED)
        self._logger.info("%s: standby pid %d loaded", self.name, child.process.app_pid)

    def take(self, config: dict[str, Any], key: str) -> RunningChild | None:
        """The loaded standby, now the child of a start with setup values ``config``,
        if it is still alive (a loaded standby is used up either way); None when
        there is none, or it is still loading."""
        child = self.child
        if child is None:
            return None
        self.child = None
        self._to(StandbyState.EMPTY)
        if not child.take_standby(config, key):
            return None
        self._logger.info("%s: setting up standby pid %d", self.name, child.process.app_pid)
        return child

    def holds(self, child: RunningChild) -> bool:
        """Whether ``child`` is the loaded standby (not one loading, nor taken)."""
        return child is self.child

    def died(self, child: RunningChild, status: ExitStatus) -> bool:
        """Forget the loaded standby, which died (reaped); True: replace it (``fill``),
        once per start and only while it is wanted."""
        assert self.holds(child), "not the loaded standby"
        self.child = None
        self._to(StandbyState.EMPTY)
        self._logger.warning(
            "%s: standby pid %d died (%s)", self.name, child.process.app_pid, status.describe()
        )
        if self._replacements > 0 and self._wanted():
            self._replacements -= 1
            return True
        return False

    async def drop(self) -> None:
        """Stop the standby, or the load of one (which ends its load and stops its child)."""
        self._scope.cancel()
        child, self.child = self.child, None
        if self.state is StandbyState.LOADED:
            self._to(StandbyState.EMPTY)
        await self._discard(child)
