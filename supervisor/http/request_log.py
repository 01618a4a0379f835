"""One log record per failed request, on the server.

A client sees its error; whoever runs the server sees this: the request id (the
``X-Request-Id`` the client got), the app, the function, the error type, the
HTTP status and how long the request took. Logged by ``supervisor.requests``:
at ``error`` for a status of 500 or more (the server's or the app's fault), at
``warning`` below (the client's, or a cancel). The figures ride on the record
as ``request``, which ``--log-format json`` writes as an object.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("supervisor.requests")


def failure_record(
    request_id: str | None,
    app: str | None,
    function: str,
    error_type: str,
    status: int,
    duration: float,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "app": app,
        "function": function,
        "error_type": error_type,
        "status": status,
        "duration": round(duration, 6),
    }


def log_failure(record: dict[str, Any], message: str) -> None:
    level = logging.ERROR if record["status"] >= 500 else logging.WARNING
    logger.log(
        level,
        "request %s failed: app=%s function=%s error=%s status=%d duration=%.3fs: %s",
        record["request_id"] or "-",
        record["app"] or "-",
        record["function"],
        record["error_type"],
        record["status"],
        record["duration"],
        message,
        extra={"request": record},
    )
