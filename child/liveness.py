"""Answering the supervisor's pings while app code blocks the event loop.

The runtime reads its input from a callback of the event loop, which is the
cheapest way to get a request to a worker. But many apps do heavy work inside
``async def run`` without yielding (a model's forward pass), and a loop that
runs app code reads nothing: the supervisor's heartbeat would go unanswered
and a busy child would look hung. This thread notices input that the loop has
left unread for a whole tick and reads it instead: pings are answered from
here, everything else waits in order for the loop. A child that answers
nothing at all is then really stopped, frozen or deadlocked.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable

TICK = 0.25
"""Seconds between looks; a blocked loop's pings are answered within two ticks."""


class LivenessWatch:
    def __init__(
        self,
        fd: int,
        loop_reads: Callable[[], int],
        read_instead: Callable[[], None],
        tick: float = TICK,
    ) -> None:
        """``loop_reads()`` counts the loop's reads so far; ``read_instead()`` reads
        and handles the waiting input from this thread."""
        self._fd = fd
        self._loop_reads = loop_reads
        self._read_instead = read_instead
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="liveness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        seen = -1
        while not self._stop.wait(self._tick):
            reads = self._loop_reads()
            if reads != seen:
                seen = reads  # the loop has read since the last look: it is not blocked
                continue
            try:
                waiting, _, _ = select.select([self._fd], [], [], 0)
            except (OSError, ValueError):
                return  # the input is closed: the runtime is ending
            if waiting:
                self._read_instead()
