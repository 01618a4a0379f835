"""A request's connection, which its handler can watch without a task of its own.

ASGI tells an application that its client left only through ``receive``: a
handler that wants to stop work for a departed client must keep a task
waiting on ``receive`` beside the work, which costs a quick call as much as
the call itself. The server's protocol (``limits.guarded_protocol``) knows
the moment the connection is lost; it puts a ``ConnectionWatch`` in each
request's ASGI scope under ``SCOPE_KEY`` and fires it then. A handler that
finds one registers a callback for the duration of its work; a handler run
by another ASGI server finds none and watches ``receive`` as before.
"""

from __future__ import annotations

from collections.abc import Callable

SCOPE_KEY = "appvisor.connection"


class ConnectionWatch:
    __slots__ = ("_callback", "lost")

    def __init__(self) -> None:
        self.lost = False
        self._callback: Callable[[], object] | None = None

    def on_lost(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback`` when the connection is lost (at once if it already is);
        None stops watching."""
        self._callback = callback
        if self.lost and callback is not None:
            self.fire()

    def fire(self) -> None:
        """The connection is gone: tell the one watching, once."""
        self.lost = True
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()
