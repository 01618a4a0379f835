"""Calls go to their endpoint past Starlette's router and exception layers.

A request through Starlette passes its error middleware, the user middleware,
its exception middleware, the router (which tries the routes in order), and,
for a function endpoint, a wrapper that makes a ``Request`` and wraps ``send``
twice more. For a no-op call that was about a fifth of the HTTP layer's Python
work (counted in opcodes), and a call needs none of it: its endpoint answers
its own errors. So ``Server`` builds a middleware stack that sends a ``POST``
on a call route to the call's plain ASGI endpoint (``CallEndpoint``) through
the error middleware and the user middleware (authentication, body limits)
only. Everything else goes the whole way, and the call routes stay in the
route table, so that what they match, and the answer to another method on
their paths, are Starlette's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send


class CallEndpoint:
    """A call route's endpoint as plain ASGI: ``handler`` answers a request with the
    ASGI app of its response (a Starlette ``Response`` or anything sent the same way)."""

    def __init__(self, handler: Callable[[Request], Awaitable[ASGIApp]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


class Server(Starlette):
    """Starlette, with the routes whose endpoint is ``calls`` taken straight to it."""

    def __init__(self, *, calls: CallEndpoint, **options: Any) -> None:
        super().__init__(**options)
        self.calls = calls

    def build_middleware_stack(self) -> ASGIApp:
        everything = super().build_middleware_stack()
        routes = [r for r in self.router.routes if isinstance(r, Route) and r.app is self.calls]
        calls: ASGIApp = self.calls
        for cls, args, kwargs in reversed(self.user_middleware):
            calls = cls(calls, *args, **kwargs)
        handler = self.exception_handlers.get(500) or self.exception_handlers.get(Exception)
        calls = ServerErrorMiddleware(calls, handler=handler, debug=self.debug)
        return _CallRouting(routes, calls, everything, self.router)


class _CallRouting:
    def __init__(
        self, routes: Sequence[Route], calls: ASGIApp, everything: ASGIApp, router: Any
    ) -> None:
        self.routes = routes
        self.calls = calls
        self.everything = everything
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    scope.setdefault("router", self.router)
                    await self.calls(scope, receive, send)
                    return
        await self.everything(scope, receive, send)
