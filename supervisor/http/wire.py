"""What crosses HTTP, apart from the endpoints themselves.

The status each supervisor error maps to, JSON and Server-Sent Event encoding
(bytes from a child become base64), the shape of a ``POST /run`` body, and the
bearer-token check. Kept apart from ``http_server`` so that the wire format can
be read, and tested, without the routes.
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.request import new_request_id
from ..errors import SupervisorError
from . import json_values

CLIENT_CLOSED = 499
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
PUBLIC_PATHS = frozenset({"/health"})


def status_for(error: SupervisorError) -> int:
    """The HTTP status an error is answered with: its class says (``http_status``)."""
    return error.http_status


# -- responses --------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    """JSON as UTF-8, with bytes (msgpack ``bin`` from a child) as base64 strings."""
    return json_values.dumps(value).encode()


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class JsonAnswer:
    """A call's JSON answer, sent as it is: a call's response always has the same
    three headers, so it needs none of ``Response``'s header building, which costs
    a no-op call's round trip more than its share."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, content: Any, request_id: str, status: int = 200) -> None:
        self.status = status
        self.body = dumps(content)
        self.headers = [
            (b"content-length", str(len(self.body)).encode()),
            (b"content-type", b"application/json"),
            (b"x-request-id", request_id.encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def error_response(
    status: int, error: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse({"error": error}, status_code=status, headers=headers)


class Reject(Exception):
    """An error found by the HTTP layer itself, before the supervisor sees the request."""

    def __init__(self, status: int, type: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.body = {"type": type, "message": message, **details}

    def response(self) -> Response:
        return error_response(self.status, self.body)


def sse_event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


# -- the request body -------------------------------------------------------------


@dataclass
class Call:
    """A request body, checked: what to call, with what, and how to answer."""

    function: str
    input: dict[str, Any]
    setup: dict[str, Any] | None
    stream: bool
    request_id: str
    timeout: float | None


def parse_call(body: Any, function: str | None) -> Call:
    if not isinstance(body, dict):
        raise Reject(400, "bad_request", "the request body must be a JSON object")
    errors: list[dict[str, Any]] = []

    def bad(key: str, msg: str) -> None:
        errors.append({"loc": ["body", key], "msg": msg, "type": "type_error"})

    name = function or body.get("function", "run")
    if not isinstance(name, str) or not name:
        bad("function", "must be a non-empty string")
    data = body.get("input", {})
    if not isinstance(data, dict):
        bad("input", "must be an object")
    setup = body.get("setup")
    if setup is not None and not isinstance(setup, dict):
        bad("setup", "must be an object")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        bad("stream", "must be a boolean")
    request_id = body.get("request_id") or new_request_id()
    if (
        not isinstance(request_id, str)
        or not REQUEST_ID.match(request_id)
        or request_id in (".", "..")
    ):
        bad("request_id", "must be 1 to 128 letters, digits, '_', '.' or '-', not '.' or '..'")
    timeout = body.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        bad("timeout", "must be a positive, finite number of seconds")
    if errors:
        raise Reject(422, "validation", "the request body is invalid", errors=errors)
    return Call(name, data, setup, stream, request_id, None if timeout is None else float(timeout))


def header(scope: Scope, name: bytes) -> str:
    """A request header's first value ("" without one), read from the scope (whose
    names are lower case): a call asks for two, and building ``Headers`` for them
    costs more than the scan."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


# -- authentication ---------------------------------------------------------------


def authorized(headers: Headers, token: bytes | None) -> bool:
    """Whether ``headers`` carry ``Authorization: Bearer <token>`` (always, without a token)."""
    if token is None:
        return True
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token)


class BearerAuth:
    """Pure ASGI (so that streaming and disconnects pass untouched): check the token."""

    def __init__(
        self, app: ASGIApp, token: str | None, public: frozenset[str] = PUBLIC_PATHS
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token is not None
            and scope["type"] == "http"
            and scope["path"] not in self.public
            and not authorized(Headers(scope=scope), self.token)
        ):
            response = error_response(
                401,
                {
                    "type": "unauthorized",
                    "message": "a valid 'Authorization: Bearer' token is required",
                },
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
