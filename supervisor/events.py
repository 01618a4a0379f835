"""What a caller receives while a request runs, in order: any number of logs,
progress reports and partial outputs, then one result (or an exception)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol import Log, Message, Partial, Progress


@dataclass(frozen=True)
class LogEvent:
    """A line the app printed or logged while the request ran."""

    request_id: str
    stream: str
    """``stdout``/``stderr`` for captured output, ``log`` for ``metadata.log``."""
    message: str


@dataclass(frozen=True)
class ProgressEvent:
    """The app's report of how far the request has got."""

    request_id: str
    fraction: float | None
    current: float | None
    total: float | None
    message: str | None


@dataclass(frozen=True)
class PartialEvent:
    """One yield of a generator function: a snapshot of the output so far."""

    request_id: str
    output: Any


@dataclass(frozen=True)
class ResultEvent:
    """The request's output: the last event of a request that succeeded."""

    request_id: str
    output: Any
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds: ``queued`` (waiting for a child), ``run`` (in the child), ``total``."""


Event = LogEvent | ProgressEvent | PartialEvent | ResultEvent


def event_for(request_id: str, message: Message) -> LogEvent | ProgressEvent | PartialEvent | None:
    """The caller's event for a child's message about a running request; None for a
    message that is not an event (its result or error ends the request instead)."""
    if isinstance(message, Log):
        return LogEvent(request_id, message.stream, message.message)
    if isinstance(message, Progress):
        return ProgressEvent(
            request_id, message.fraction, message.current, message.total, message.message
        )
    if isinstance(message, Partial):
        return PartialEvent(request_id, message.output)
    return None
