"""Calls go to their endpoint past Starlette's router (``call_dispatch``), and lose
nothing on the way: the authentication and body limits still stand in front of
them, an error in the handler is still a JSON 500, and the answer is the same.
The app in this process with a fake child (``scripted_app``), called through
httpx's ASGI transport: no process, no socket."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from supervisor.core.app import App
from supervisor.http.limits import HttpLimits
from supervisor.http.server import ServerSettings, create_app

pytestmark = pytest.mark.anyio
CALL_PATHS = ["/run", "/run/run", "/apps/app/run", "/apps/app/run/run"]


@contextlib.asynccontextmanager
async def _client(
    app: App, settings: ServerSettings | None = None, prefix: str = ""
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``create_app`` serving ``app`` (mounted under ``prefix`` when given)."""
    server = create_app({"app": app}, settings)
    asgi: Any = Starlette(routes=[Mount(prefix, app=server)]) if prefix else server
    transport = httpx.ASGITransport(asgi, raise_app_exceptions=False)
    async with (
        server.router.lifespan_context(server),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


def _call_routes(app: Starlette) -> list[Route]:
    return [r for r in app.routes if isinstance(r, Route) and r.path.endswith("/run")]


@pytest.mark.parametrize("path", CALL_PATHS)
async def test_a_call_is_answered_on_every_call_path(scripted_app: App, path: str) -> None:
    async with _client(scripted_app) as client:
        response = await client.post(path, json={"input": {"n": 1}, "request_id": "r-1"})
    assert response.status_code == 200
    assert response.json()["output"] == {"echo": {"n": 1}}
    assert response.json()["request_id"] == "r-1"
    assert response.headers["x-request-id"] == "r-1"
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)


async def test_a_call_skips_the_router_and_everything_else_takes_it(
    scripted_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route table still decides what a call path is, and answers other methods."""
    handled: list[str] = []
    server = create_app({"app": scripted_app})
    for route in _call_routes(server):
        original = route.handle

        async def handle(scope: Any, receive: Any, send: Any, original: Any = original) -> None:
            handled.append(f"{scope['method']} {scope['path']}")
            await original(scope, receive, send)

        monkeypatch.setattr(route, "handle", handle)
    transport = httpx.ASGITransport(server)
    async with (
        server.router.lifespan_context(server),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        assert (await client.post("/run", json={"input": {}})).status_code == 200
        wrong_method = await client.get("/run")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "method_not_allowed"
    assert handled == ["GET /run"]


@pytest.mark.parametrize("path", CALL_PATHS)
async def test_a_call_without_the_token_is_refused(scripted_app: App, path: str) -> None:
    settings = ServerSettings(auth_token="s3cret")
    async with _client(scripted_app, settings) as client:
        refused = await client.post(path, json={"input": {}})
        wrong = await client.post(
            path, json={"input": {}}, headers={"Authorization": "Bearer nope"}
        )
        allowed = await client.post(
            path, json={"input": {}}, headers={"Authorization": "Bearer s3cret"}
        )
    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["error"]["type"] == "unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert allowed.status_code == 200


async def test_a_call_over_the_body_limit_is_refused(scripted_app: App) -> None:
    settings = ServerSettings(limits=HttpLimits(max_body_size=100))
    body = json.dumps({"input": {"text": "x" * 200}})
    async with _client(scripted_app, settings) as client:
        declared = await client.post(
            "/run", content=body, headers={"content-type": "application/json"}
        )

        async def chunks() -> AsyncIterator[bytes]:  # no length declared: counted as it comes
            yield body[:80].encode()
            yield body[80:].encode()

        streamed = await client.post(
            "/run", content=chunks(), headers={"content-type": "application/json"}
        )
    assert declared.status_code == streamed.status_code == 413
    assert declared.json()["error"]["type"] == streamed.json()["error"]["type"] == "too_large"


async def test_an_error_in_the_call_handler_is_a_json_500(
    scripted_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(scripted_app, "submit", broken)  # what a call runs on (no watch here)
    async with _client(scripted_app) as client:
        response = await client.post("/run", json={"input": {}})
    assert response.status_code == 500
    assert response.json() == {"error": {"type": "internal", "message": "RuntimeError: boom"}}


async def test_a_mounted_server_answers_calls_under_its_prefix(scripted_app: App) -> None:
    async with _client(scripted_app, prefix="/v1") as client:
        called = await client.post("/v1/apps/app/run", json={"input": {"n": 2}})
        wrong_method = await client.get("/v1/run")
        outside = await client.post("/run", json={"input": {}})
    assert called.status_code == 200
    assert called.json()["output"] == {"echo": {"n": 2}}
    assert wrong_method.status_code == 405
    assert outside.status_code == 404
