"""Each app's recent log lines, kept in memory for the status page.

A logging handler on the loggers that speak for apps: ``supervisor.app.NAME``
(the app's own output while it is imported and set up, and what the runtime
says about its replicas) and ``supervisor.requests`` (its failed requests,
named by the record's ``request``). The newest ``size`` lines per app are kept;
nothing is written anywhere.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from ..log_setup import APP_LOGGER, app_name

REQUESTS_LOGGER = "supervisor.requests"


class RecentLogs(logging.Handler):
    def __init__(self, size: int = 200) -> None:
        super().__init__(logging.INFO)
        self.size = size
        self.lines: dict[str, deque[dict[str, Any]]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        app = app_name(record)
        if app is None:
            request = getattr(record, "request", None)
            app = request.get("app") if isinstance(request, dict) else None
        if not app:
            return
        lines = self.lines.get(app)
        if lines is None:
            lines = self.lines[app] = deque(maxlen=self.size)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the app's logging
            message = str(record.msg)
        lines.append(
            {"time": record.created, "level": record.levelname.lower(), "message": message}
        )

    def recent(self, app: str, count: int = 50) -> list[dict[str, Any]]:
        lines = self.lines.get(app, ())
        return list(lines)[-count:]

    def attach(self) -> None:
        """Listen to the app loggers, which must pass INFO for the app's output to be kept."""
        for name in (APP_LOGGER, REQUESTS_LOGGER):
            logger = logging.getLogger(name)
            logger.addHandler(self)
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)

    def detach(self) -> None:
        for name in (APP_LOGGER, REQUESTS_LOGGER):
            logging.getLogger(name).removeHandler(self)
