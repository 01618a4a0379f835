"""What a caller receives while a request runs, in order: any number of logs,
progress reports and partial outputs, then one result (or an exception)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LogEvent:
    request_id: str
    stream: str
    """``stdout``/``stderr`` for captured output, ``log`` for ``metadata.log``."""
    message: str


@dataclass(frozen=True)
class ProgressEvent:
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
    request_id: str
    output: Any
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds: ``queued`` (waiting for a child), ``run`` (in the child), ``total``."""


Event = LogEvent | ProgressEvent | PartialEvent | ResultEvent
