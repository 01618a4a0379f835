"""A server's apps starting in the background, once its port is bound.

``serve`` binds first and answers health checks at once (a liveness probe must
not kill a server that is loading a model); the apps then start one after the
other in a task of the server's lifespan. ``Startup`` is what the HTTP layer
sees meanwhile: each app's state (``pending``, then the state its replicas
report, ``starting`` or ``setting_up``, then ``ready``, or ``failed``), the apps
that already serve, and a way for a request to wait a bounded time for its app.

The first app that fails ends the start: the apps after it are not tried, and
``on_failure`` is told (``serve`` then shuts down and exits with the error's
code).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from .. import errors
from .app import App

logger = logging.getLogger("supervisor.startup")

PENDING = "pending"
STARTING = "starting"
UNLOADED = "unloaded"
FAILED = "failed"


@dataclass(eq=False)
class AppStart:
    """One app to start: its name (from ``inf.yml``) and how to start it."""

    name: str
    start: Callable[[], Awaitable[App]]
    app: App | None = None
    error: errors.SupervisorError | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)
    """Set when the app serves, and when it never will (failed, or not tried)."""


class Startup:
    def __init__(
        self,
        starts: Sequence[AppStart],
        starting: Callable[[str], App | None] = lambda name: None,
        on_failure: Callable[[str, errors.SupervisorError], None] | None = None,
    ) -> None:
        """``starting(name)`` is the app being started under that name, if it has
        one yet (``Supervisor.apps.get``): its replicas say how far its start is."""
        self.starts = {start.name: start for start in starts}
        self._starting = starting
        self._on_failure = on_failure
        self.failure: errors.SupervisorError | None = None
        self.finished = anyio.Event()
        self._apps = {start.name: start.app for start in starts if start.app is not None}

    async def run(self) -> None:
        """Start every app in order; stop at the first failure."""
        try:
            for start in self.starts.values():
                try:
                    start.app = self._apps[start.name] = await start.start()
                except errors.SupervisorError as error:
                    start.error = self.failure = error
                    if self._on_failure is not None:
                        self._on_failure(start.name, error)
                    else:
                        logger.error(
                            "cannot start %s: %s (%s)", start.name, error.message, error.type
                        )
                    return
                finally:
                    start.ready.set()
        finally:
            for start in self.starts.values():
                start.ready.set()
            self.finished.set()

    @property
    def apps(self) -> dict[str, App]:
        """The apps that have started (and serve requests), in start order; read-only."""
        return self._apps

    def known(self, name: str) -> bool:
        return name in self.starts

    async def wait_for(self, name: str, timeout: float) -> App | None:
        """The app once it serves, waiting up to ``timeout`` seconds; None if it does not."""
        start = self.starts[name]
        if start.app is None and timeout > 0:
            with anyio.move_on_after(timeout):
                await start.ready.wait()
        return start.app

    def state(self, name: str) -> dict[str, Any]:
        """An app's state while it starts: what ``/health/ready`` shows for it."""
        start = self.starts[name]
        if start.app is not None:
            status = start.app.status()
            return {"state": status["state"], "available": bool(status["available"])}
        if start.error is not None:
            return {
                "state": FAILED,
                "available": False,
                "error": {"type": start.error.type, "message": start.error.message},
            }
        app = self._starting(name)
        if app is None:
            return {"state": PENDING, "available": False}
        state = app.status()["state"]
        # Registered, its replicas not spawned yet: that is the start's first step.
        return {"state": STARTING if state == UNLOADED else state, "available": False}

    def states(self) -> dict[str, dict[str, Any]]:
        return {name: self.state(name) for name in self.starts}


def started(apps: Mapping[str, App]) -> Startup:
    """A ``Startup`` for apps that already run (a server given running apps)."""

    startup = Startup([AppStart(name, _never, app=app) for name, app in apps.items()])
    for start in startup.starts.values():
        start.ready.set()
    startup.finished.set()
    return startup


async def _never() -> App:
    raise AssertionError("an app that already runs is not started again")
