"""HTTP in front of a supervisor: a Starlette app that maps requests onto ``App`` calls.

Only the mapping lives here (routes, bodies, responses); what a request does is
the supervisor's business, the status codes, JSON/SSE encoding, body shape and
auth are ``http_wire``'s, what a file input may name is ``http_files``', the
schemas come from ``openapi`` and the figures from ``metrics``. ``create_app``
takes either apps that already run or a factory whose async context yields
them (or a ``startup.Startup`` starting them in the background), entered in the
server's lifespan so that the supervisor starts before the first request and
stops after the last one. A request for an app still starting waits for it
(``start_wait``), then gets 503 ``starting`` with ``Retry-After``.

Endpoints (with several apps, ``/run`` and ``/cancel`` live under
``/apps/{name}/``; a single app is served at the root as well):

    POST /run, /run/{function}   {"function", "input", "setup"?, "stream"?, "request_id"?,
                                  "timeout"?}
    POST /cancel/{request_id}    200 {"cancelled": true} or 404
    GET  /health                 200 when every app is available, else 503
    GET  /health/live            200 while the process runs (even while apps start)
    GET  /health/ready           200 when every app is available, else 503 with each state
    GET  /openapi.json, /docs, /metrics, /files/{request_id}/{token}/{filename}

Errors are ``{"error": {"type", "message", ...}}`` with the status that
``status_for`` gives: 422 validation and unknown function, 500 app exception and
setup/load failure, 503 crash, eviction, budget, stopped, failed, out of memory
and admission (transient capacity: retry), 504 timeout, 429 busy, 409 cancelled
(by a cancel call), 502 protocol violation; 400 a malformed body, 401 a missing
token, 404 an unknown app or request. A client that disconnects cancels its
request (its outcome is logged as 499 ``disconnected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from ..app_traceback import for_people
from ..core.app import App
from ..core.request import Item
from ..core.request import Request as SubmittedRequest
from ..core.startup import FAILED, Startup, started
from ..errors import SupervisorError
from ..events import Event, LogEvent, PartialEvent, ProgressEvent, ResultEvent
from .call_dispatch import CallEndpoint, Server
from .connection_watch import SCOPE_KEY as CONNECTION
from .connection_watch import ConnectionWatch
from .docs_page import ASSETS, asset_paths, assets_dir, render_page
from .fetch_policy import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, FetchPolicy, parse_allow
from .files import (
    DEFAULT_MAX_OUTPUT_FILE,
    FileRegistry,
    Loc,
    PathPolicy,
    check_file_inputs,
    file_locations,
    get_at,
    may_hold_files,
    parse_field_path,
    publish_files,
    publishable,
    remote_url,
    safe_filename,
    set_at,
    under_any,
)
from .limits import BodyGuard, BodyRejected, HttpLimits
from .metrics import GpuFigures, Metrics
from .openapi import build_openapi
from .recent_logs import RecentLogs
from .request_log import failure_record, log_failure
from .status_page import render_page as render_status_page
from .wire import (
    CLIENT_CLOSED,
    PUBLIC_PATHS,
    BearerAuth,
    Call,
    JsonAnswer,
    JSONResponse,
    Reject,
    authorized,
    error_response,
    header,
    parse_call,
    sse_event,
    status_for,
)

if TYPE_CHECKING:
    from .url_fetch import UrlFetcher

AppsFactory = Callable[[], AbstractAsyncContextManager[Mapping[str, App] | Startup]]
"""Entered in the lifespan: running apps, or a ``Startup`` starting them in the background."""

KEEP_ALIVE = b": keep-alive\n\n"
"""An SSE comment: clients ignore it, proxies see traffic."""
QUICK_CALL = 0.05
"""Seconds a call may take before the server starts watching for its client leaving."""


@dataclass(frozen=True)
class ServerSettings:
    """The operator's choices for one HTTP server (``serve``'s options)."""

    auth_token: str | None = None
    """When set, every endpoint but ``/health`` needs ``Authorization: Bearer <token>``."""
    allowed_paths: tuple[str | Path, ...] = ()
    """Directories under which a local path is accepted as a file input."""
    max_served_files: int = 4096
    """Output files kept downloadable; the oldest are forgotten first."""
    upload_dir: str | Path | None = None
    """Where uploads are kept while their request runs (a temporary directory by default)."""
    max_upload_files: int = 64
    limits: HttpLimits = field(default_factory=HttpLimits)
    """Body sizes and slow clients (``http_limits``); nesting depth and value counts
    are the apps' own (``Supervisor.start(limits=...)``)."""
    start_wait: float = 30.0
    """Seconds a request for an app that is still starting waits for it before a 503."""
    retry_after: int = 5
    """The ``Retry-After`` seconds of that 503."""
    debug: bool = False
    """Show the runtime's frames in the tracebacks of app errors (hidden by default)."""
    sse_keepalive: float | None = 15.0
    """Seconds of silence on an event stream before a ``: keep-alive`` comment (None: never)."""
    max_output_file_size: int = DEFAULT_MAX_OUTPUT_FILE
    """Bytes an output file may have to be published under ``/files``."""
    output_file_owner: int | None = None
    """With children running as another user: its uid, the only owner of files that
    may be published (``serve --child-user`` sets it)."""
    allow_fetch: tuple[str, ...] = ()
    """Hosts (``HOST[:PORT]``) and networks (``CIDR``) that file URLs may reach although
    they are not public (``fetch_policy``); every public address is allowed."""
    fetch_max_bytes: int = DEFAULT_MAX_BYTES
    fetch_timeout: float = DEFAULT_TIMEOUT
    """Seconds a file URL's fetch may take, redirects included."""


class NotReady(Reject):
    """A request for an app that is not serving yet: 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int, **details: Any) -> None:
        super().__init__(503, "starting", message, **details)
        self.retry_after = retry_after

    def response(self) -> Response:
        return error_response(self.status, self.body, {"Retry-After": str(self.retry_after)})


# -- the endpoints ----------------------------------------------------------------


class HttpApi:
    def __init__(
        self,
        settings: ServerSettings,
        gpus: GpuFigures | None = None,
        logs: RecentLogs | None = None,
    ) -> None:
        self.settings = settings
        self.startup: Startup | None = None
        self.files = FileRegistry(settings.max_served_files)
        self.metrics = Metrics(lambda: self.apps, gpus)
        self.gpus = gpus
        self.logs = logs if logs is not None else RecentLogs()
        self.policy = PathPolicy(tuple(Path(p) for p in settings.allowed_paths))
        self.upload_root: Path | None = None
        self.fetch_policy = FetchPolicy(
            parse_allow(settings.allow_fetch),
            max_bytes=settings.fetch_max_bytes,
            timeout=settings.fetch_timeout,
        )
        self.fetcher: UrlFetcher | None = None
        """Made by the first request with a file URL: its HTTP client (httpx, TLS) is
        not worth loading before that."""
        self._fetcher_made = anyio.Lock()
        self.token = settings.auth_token.encode() if settings.auth_token else None
        self.calls = CallEndpoint(self.run)
        """The endpoint of every call route (``call_dispatch``)."""

    @property
    def apps(self) -> dict[str, App]:
        """The apps serving requests (those still starting are not among them)."""
        return self.startup.apps if self.startup is not None else {}

    def routes(self) -> list[Route]:
        """Calls first: Starlette tries the routes in order, and no path of the others
        overlaps theirs."""
        run, cancel = ["POST"], ["POST"]
        calls = self.calls
        return [
            Route("/run", calls, methods=run),
            Route("/run/{function}", calls, methods=run),
            Route("/apps/{app}/run", calls, methods=run),
            Route("/apps/{app}/run/{function}", calls, methods=run),
            Route("/cancel/{request_id}", self.cancel, methods=cancel),
            Route("/apps/{app}/cancel/{request_id}", self.cancel, methods=cancel),
            Route("/health", self.health, methods=["GET"]),
            Route("/health/live", self.live, methods=["GET"]),
            Route("/health/ready", self.ready, methods=["GET"]),
            Route("/", self.status_page, methods=["GET"]),
            Route("/ui", self.status_page, methods=["GET"]),
            Route("/status", self.status, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/docs", self.docs, methods=["GET"]),
            Route("/docs/{asset}", self.docs_asset, methods=["GET"]),
            Route("/files/{request_id}/{token}/{filename}", self.download, methods=["GET"]),
            Route("/restart", self.restart, methods=["POST"]),
            Route("/apps/{app}/restart", self.restart, methods=["POST"]),
        ]

    async def app_for(self, request: Request) -> App:
        """The app a request names, waiting (``start_wait``) for one that is starting."""
        startup = self.startup
        assert startup is not None, "the server is not started"
        name = request.path_params.get("app")
        if name is None:
            if len(startup.starts) != 1:
                raise Reject(
                    404,
                    "not_found",
                    f"several apps are served: use /apps/{{name}}/...; "
                    f"apps: {sorted(startup.starts)}",
                )
            name = next(iter(startup.starts))
        if not startup.known(name):
            raise Reject(404, "not_found", f"no app named {name!r}; apps: {sorted(startup.starts)}")
        app = await startup.wait_for(name, self.settings.start_wait)
        if app is not None:
            return app
        state = startup.state(name)
        if state["state"] == FAILED:
            raise Reject(503, "app_failed", f"{name} could not start", **state)
        raise NotReady(
            f"{name} is starting ({state['state']}); retry later",
            self.settings.retry_after,
            state=state["state"],
        )

    # -- POST /run ------------------------------------------------------------------

    async def run(self, request: Request) -> Response | JsonAnswer:
        started = time.monotonic()
        upload_dir: Path | None = None
        app: App | None = None
        function = request.path_params.get("function") or "run"
        try:
            app = await self.app_for(request)
            body, upload_dir, uploads = await self.read_body(request)
            call = parse_call(body, request.path_params.get("function"))
            function = call.function
            self.vet_files(app, call, uploads)
            upload_dir = await self.fetch_remote(app, call, upload_dir)
        except Reject as exc:
            self.cleanup(upload_dir)
            name = app.name if app is not None else request.path_params.get("app")
            self.finish(name, function, None, started, (exc.type, exc.status, str(exc)))
            return exc.response()
        headers = {"X-Request-Id": call.request_id}
        if call.stream or "text/event-stream" in header(request.scope, b"accept"):
            # Submit first: a full queue or a stopped app is an HTTP status, not an
            # event, and the request id in the `start` event can be cancelled at once.
            try:
                submitted = self.submit(app, call)
            except SupervisorError as exc:
                self.cleanup(upload_dir)
                self.finish(app.name, function, call.request_id, started, _failure(exc))
                return error_response(status_for(exc), self.error_body(exc), headers)
            return StreamingResponse(
                self.events(request, app, call, submitted, started),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                background=BackgroundTask(self.cleanup, upload_dir),
            )
        try:
            result, error = await self.until_done(request, app, call)
        finally:
            self.cleanup(upload_dir)
        failure: tuple[str, int, str] | None = None
        response: Response | JsonAnswer
        if error is not None:
            failure = _failure(error)
            response = error_response(status_for(error), self.error_body(error), headers)
        elif result is None:
            failure = ("disconnected", CLIENT_CLOSED, "the client went away")
            response = Response(status_code=CLIENT_CLOSED, headers=headers)
        else:
            response = JsonAnswer(self.result_body(request, app, call, result), call.request_id)
        self.finish(app.name, call.function, call.request_id, started, failure)
        return response

    def error_body(self, error: SupervisorError) -> dict[str, Any]:
        """The error as the client sees it: an app's traceback without the runtime's
        frames, unless the server runs with ``debug``."""
        body = error.to_dict()
        traceback = body.get("traceback")
        if isinstance(traceback, str) and not self.settings.debug:
            body["traceback"] = for_people(traceback)
        return body

    def finish(
        self,
        app: str | None,
        function: str,
        request_id: str | None,
        started: float,
        failure: tuple[str, int, str] | None,
    ) -> None:
        """Count a request's outcome; log it once if it failed (type, status, message)."""
        duration = time.monotonic() - started
        if app is not None and app in self.apps:
            self.metrics.observe(app, function, failure[0] if failure else "ok", duration)
        if failure is not None:
            error_type, status, message = failure
            record = failure_record(request_id, app, function, error_type, status, duration)
            log_failure(record, message)

    async def read_body(self, request: Request) -> tuple[Any, Path | None, dict[Loc, Any]]:
        """The JSON body, and for a multipart one the directory its uploads were saved in.

        Sizes and stalls are bounded by ``BodyGuard``; a large body is parsed in a
        worker thread, so that it does not hold up every other client.
        """
        limits = self.settings.limits
        if not header(request.scope, b"content-type").startswith("multipart/form-data"):
            try:
                raw = await _body(request)
            except BodyRejected as exc:
                raise Reject(exc.status, exc.type, exc.message) from None
            return await self.parse_json(raw) if raw.strip() else {}, None, {}
        upload_dir: Path | None = None
        uploads: dict[Loc, Any] = {}
        try:
            async with request.form(
                max_files=self.settings.max_upload_files, max_part_size=limits.max_body_size
            ) as form:
                raw_request = form.get("request")
                if isinstance(raw_request, UploadFile):
                    if (raw_request.size or 0) > limits.max_body_size:
                        raise Reject(
                            413,
                            "too_large",
                            f"the request part is larger than {limits.max_body_size} bytes",
                        )
                    raw_request = (await raw_request.read()).decode("utf-8", "replace")
                body = await self.parse_json((raw_request or "{}").encode())
                for index, (name, part) in enumerate(form.multi_items()):
                    if not isinstance(part, UploadFile):
                        continue
                    try:
                        loc = parse_field_path(name)
                    except ValueError as exc:
                        raise Reject(422, "validation", str(exc)) from None
                    if upload_dir is None:
                        assert self.upload_root is not None, "the server is not started"
                        upload_dir = _request_dir(self.upload_root)
                    target = upload_dir / f"{index}-{safe_filename(part.filename)}"
                    await anyio.to_thread.run_sync(_save, part, target)
                    value: dict[str, Any] = {"path": str(target)}
                    if part.content_type and part.content_type != "application/octet-stream":
                        value["content_type"] = part.content_type
                    uploads[loc] = value
        except Reject:
            self.cleanup(upload_dir)
            raise
        except BodyRejected as exc:
            self.cleanup(upload_dir)
            raise Reject(exc.status, exc.type, exc.message) from None
        except HTTPException as exc:
            self.cleanup(upload_dir)
            raise Reject(400, "bad_request", str(exc.detail)) from None
        return body, upload_dir, uploads

    async def parse_json(self, raw: bytes) -> Any:
        if len(raw) >= self.settings.limits.parse_off_loop:
            return await anyio.to_thread.run_sync(_parse_json, raw)
        return _parse_json(raw)

    def vet_files(self, app: App, call: Call, uploads: Mapping[Loc, Any]) -> None:
        """Refuse local paths outside the allowed directories, then place the uploads."""
        errors: list[dict[str, Any]] = []
        schema = app.functions.get(call.function, {}).get("input_schema")
        if isinstance(schema, dict):
            errors += check_file_inputs(schema, call.input, self.policy)
        if call.setup is not None and isinstance(app.setup_schema, dict):
            # Setup values name files as inputs do, under the same policy.
            errors += check_file_inputs(app.setup_schema, call.setup, self.policy, "setup")
        if errors:
            raise Reject(
                422,
                "validation",
                "a file input names a path that is not allowed",
                errors=errors,
            )
        for loc, value in uploads.items():
            try:
                set_at(call.input, loc, value)
            except KeyError as exc:
                raise Reject(422, "validation", str(exc.args[0])) from None

    async def fetch_remote(self, app: App, call: Call, upload_dir: Path | None) -> Path | None:
        """Fetch every http(s) file value here, under the fetch policy, and hand the child
        a local path instead: the request's directory (made when needed) gets a link to
        each input's file; a setup value's file stays where the cache keeps it."""
        wanted: list[tuple[str, dict[str, Any], Loc, str]] = []
        places = [("input", call.input, app.functions.get(call.function, {}).get("input_schema"))]
        if call.setup is not None:
            places.append(("setup", call.setup, app.setup_schema))
        for where, data, schema in places:
            if isinstance(schema, dict):
                for loc in file_locations(schema, data):
                    url = remote_url(get_at(data, loc))
                    if url is not None:
                        wanted.append((where, data, loc, url))
        if not wanted:
            return upload_dir
        from .url_fetch import FetchError

        assert self.upload_root is not None, "the server is not started"
        fetcher = await self.url_fetcher()
        made = upload_dir is None
        directory = _request_dir(self.upload_root) if upload_dir is None else upload_dir
        errors: list[dict[str, Any]] = []
        for where, data, loc, url in wanted:
            try:
                fetched = await fetcher.fetch(url, pin=where == "setup")
            except FetchError as exc:
                errors.append({"loc": [where, *loc], "msg": str(exc), "type": exc.kind})
                continue
            path = fetched.path if where == "setup" else fetcher.link_into(fetched, directory)
            old = get_at(data, loc)
            value = (
                {k: v for k, v in old.items() if k not in ("uri", "path")}
                if isinstance(old, dict)
                else {}
            )
            value["path"] = str(path)
            if fetched.content_type and "content_type" not in value:
                value["content_type"] = fetched.content_type
            set_at(data, loc, value)
        if errors:
            if made:
                self.cleanup(directory)
            raise Reject(422, "validation", "a file input could not be fetched", errors=errors)
        return directory

    async def url_fetcher(self) -> UrlFetcher:
        """The fetcher, made (off the loop: httpx and a TLS context) by its first user."""
        async with self._fetcher_made:
            if self.fetcher is None:
                root = self.upload_root
                assert root is not None, "the server is not started"
                self.fetcher = await anyio.to_thread.run_sync(
                    lambda: _url_fetcher(self.fetch_policy, root / "fetched")
                )
        return self.fetcher

    def cleanup(self, upload_dir: Path | None) -> None:
        """Remove a request's uploads, unless the app returned one of them as an output."""
        if upload_dir is None:
            return
        if any(under_any(path, [upload_dir]) for path in self.files.paths()):
            return
        shutil.rmtree(upload_dir, ignore_errors=True)

    async def until_done(
        self, request: Request, app: App, call: Call
    ) -> tuple[ResultEvent | None, SupervisorError | None]:
        """Run the call to its end; both None when the client went away (and it was cancelled).

        Under ``serve``'s protocol the call runs in this task, and the connection's
        loss cancels it (``connection_watch``, ``_call_watched``). Under another ASGI
        server only ``receive`` tells: a call that takes longer than ``QUICK_CALL``
        seconds gets a task that watches it, which keeps quick calls cheap there too.
        """
        watch: ConnectionWatch | None = request.scope.get(CONNECTION)
        if watch is not None:
            return await _call_watched(app, call, watch)
        try:
            submitted = self.submit(app, call)
        except SupervisorError as exc:
            return None, exc
        try:
            with anyio.move_on_after(QUICK_CALL):
                return await _outcome(submitted)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_cancel_on_disconnect, request, tasks.cancel_scope)
                outcome = await _outcome(submitted)
                tasks.cancel_scope.cancel()
                return outcome
            return None, None
        finally:
            if not submitted.finished:
                with anyio.CancelScope(shield=True):
                    await app.cancel(submitted.id)

    def submit(self, app: App, call: Call) -> SubmittedRequest:
        return app.submit(call.input, **_call_options(call))

    def result_body(
        self, request: Request, app: App, call: Call, result: ResultEvent
    ) -> dict[str, Any]:
        return {
            "output": self.publish(request, app, call, result.output),
            "request_id": call.request_id,
            "timings": result.timings,
        }

    def publish(self, request: Request, app: App, call: Call, output: Any) -> Any:
        """Only what the function's output schema declares as files becomes a URL."""
        schema = app.functions.get(call.function, {}).get("output_schema")
        if not may_hold_files(schema):
            return output
        return publish_files(
            schema,
            output,
            call.request_id,
            self.files,
            str(request.base_url),
            self.settings.max_output_file_size,
            self.settings.output_file_owner,
        )

    async def events(
        self, request: Request, app: App, call: Call, submitted: SubmittedRequest, started: float
    ) -> AsyncIterator[bytes]:
        """The Server-Sent Events of one call; the client leaving cancels it."""
        failure: tuple[str, int, str] | None = ("disconnected", CLIENT_CLOSED, "the client left")
        try:
            yield sse_event(
                "start", {"request_id": call.request_id, "app": app.name, "function": call.function}
            )
            try:
                async for event in _follow(app, submitted, self.settings.sse_keepalive):
                    if event is None:
                        yield KEEP_ALIVE
                    elif isinstance(event, LogEvent):
                        yield sse_event("log", {"stream": event.stream, "message": event.message})
                    elif isinstance(event, ProgressEvent):
                        yield sse_event(
                            "progress",
                            {
                                "fraction": event.fraction,
                                "current": event.current,
                                "total": event.total,
                                "message": event.message,
                            },
                        )
                    elif isinstance(event, PartialEvent):
                        yield sse_event(
                            "partial", {"output": self.publish(request, app, call, event.output)}
                        )
                    elif isinstance(event, ResultEvent):
                        failure = None
                        yield sse_event("result", self.result_body(request, app, call, event))
            except SupervisorError as exc:
                failure = _failure(exc)
                yield sse_event("error", {"error": self.error_body(exc), "status": status_for(exc)})
        finally:
            self.finish(app.name, call.function, call.request_id, started, failure)

    # -- the rest -------------------------------------------------------------------

    async def cancel(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        try:
            apps = (
                [await self.app_for(request)]
                if "app" in request.path_params
                else list(self.apps.values())
            )
        except Reject as exc:
            return exc.response()
        for app in apps:
            if await app.cancel(request_id):
                return JSONResponse({"cancelled": True, "request_id": request_id, "app": app.name})
        return error_response(
            404, {"type": "not_found", "message": f"no request {request_id!r} in flight"}
        )

    async def restart(self, request: Request) -> Response:
        """An operator's restart: a failed app is tried again at once, a running one
        gets fresh children once their requests are done."""
        try:
            app = await self.app_for(request)
        except Reject as exc:
            return exc.response()
        try:
            await app.restart()
        except SupervisorError as exc:
            return error_response(status_for(exc), exc.to_dict())
        return JSONResponse({"restarted": True, "app": app.name, "status": app.status()})

    async def health(self, request: Request) -> Response:
        statuses: dict[str, dict[str, Any]] = {
            name: app.status() for name, app in self.apps.items()
        }
        if self.startup is not None:
            for name, state in self.startup.states().items():
                statuses.setdefault(name, state)
        ready = bool(statuses) and all(status.get("available") for status in statuses.values())
        if not authorized(request.headers, self.token):
            # Public when a token is set: readiness only, no pids, paths or exit details.
            statuses = {
                name: {key: status.get(key) for key in ("ready", "available", "state")}
                for name, status in statuses.items()
            }
        body = {"status": "ok" if ready else "unavailable", "apps": statuses}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def live(self, request: Request) -> Response:
        """200 while the process runs: a liveness probe must not kill a loading server."""
        return JSONResponse({"status": "live"})

    async def ready(self, request: Request) -> Response:
        """200 when every app is available, else 503 with each app's state."""
        states = self.startup.states() if self.startup is not None else {}
        ready = bool(states) and all(state["available"] for state in states.values())
        if ready:
            overall = "ready"
        elif any(state["state"] == FAILED for state in states.values()):
            overall = "failed"
        elif self.startup is not None and not self.startup.finished.is_set():
            overall = "starting"
        else:
            overall = "unavailable"
        return JSONResponse({"status": overall, "apps": states}, status_code=200 if ready else 503)

    async def status_page(self, request: Request) -> Response:
        return HTMLResponse(render_status_page())

    async def status(self, request: Request) -> Response:
        """What the status page shows: every app (or its start-up state), GPUs, recent logs."""
        apps: dict[str, dict[str, Any]] = {}
        states = self.startup.states() if self.startup is not None else {}
        for name, state in states.items():
            app = self.apps.get(name)
            apps[name] = app.status() if app is not None else state
        ready = bool(apps) and all(status.get("available") for status in apps.values())
        body = {
            "ready": ready,
            "apps": apps,
            "gpus": list(self.gpus()) if self.gpus is not None else [],
            "logs": {name: self.logs.recent(name) for name in apps},
        }
        return JSONResponse(body)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def openapi(self, request: Request) -> Response:
        startup = self.startup
        pending = tuple(n for n in startup.starts if n not in self.apps) if startup else ()
        document = await anyio.to_thread.run_sync(
            lambda: build_openapi(
                self.apps, auth=self.settings.auth_token is not None, pending=pending
            )
        )
        return JSONResponse(document)

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(render_page(auth=self.settings.auth_token is not None))

    async def docs_asset(self, request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in ASSETS:
            return error_response(404, {"type": "not_found", "message": f"no asset {name!r}"})
        return FileResponse(
            assets_dir() / name,
            media_type=ASSETS[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )

    async def download(self, request: Request) -> Response:
        params = request.path_params
        served = self.files.lookup(params["request_id"], params["token"])
        if (
            served is None
            or served.filename != params["filename"]
            or publishable(
                served.path, self.settings.max_output_file_size, self.settings.output_file_owner
            )
            is not None
        ):
            return error_response(
                404, {"type": "not_found", "message": "no such file (or it expired)"}
            )
        return FileResponse(
            served.path,
            media_type=served.content_type,
            filename=served.filename,
            content_disposition_type="inline",
        )


async def _follow(
    app: App, submitted: SubmittedRequest, keepalive: float | None
) -> AsyncIterator[Event | None]:
    """A request's events, with None after each ``keepalive`` seconds without one (for a
    keep-alive comment: proxies cut a silent stream). Raises the request's error; a
    consumer that leaves before the end cancels the request."""
    try:
        while True:
            item: Item | None = None
            waited = False
            with anyio.move_on_after(keepalive if keepalive else math.inf):
                item = await submitted.next_item()
                waited = True
            if not waited:
                yield None
                continue
            if item is None:
                return
            if isinstance(item, SupervisorError):
                raise item
            yield item
    finally:
        if not submitted.finished:
            with anyio.CancelScope(shield=True):
                await app.cancel(submitted.id)


async def _call_watched(
    app: App, call: Call, watch: ConnectionWatch
) -> tuple[ResultEvent | None, SupervisorError | None]:
    """The call, in this task, which the connection's loss cancels; both None then.

    The watch cancels the task itself (``Task.cancel``, which a plain callback may
    call), where an anyio cancel scope would do the same for a sixth of the HTTP
    layer's Python work on a no-op call. The call's own cleanup is the same either
    way (it sees the task cancelled). A cancellation that is not the watch's, such
    as the server's at its shutdown deadline, goes on up.
    """
    task = asyncio.current_task()
    assert task is not None, "a call runs in a task"
    watch.on_lost(task.cancel)
    try:
        return await app.call(call.input, **_call_options(call)), None
    except SupervisorError as exc:
        return None, exc
    except asyncio.CancelledError:
        if not watch.lost:
            raise
        if sys.version_info >= (3, 11):
            task.uncancel()  # handled here: what waits on this task's cancels is not told
        return None, None
    finally:
        watch.on_lost(None)


async def _body(request: Request) -> bytes:
    """The whole body, read straight from ``receive`` (``Request.body`` does the same
    through a stream and a cache, which a body read once does not need)."""
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def _call_options(call: Call) -> dict[str, Any]:
    """The keywords of ``App.call`` and ``App.submit`` that a body gives."""
    return {
        "function": call.function,
        "setup": call.setup,
        "timeout": call.timeout,
        "request_id": call.request_id,
    }


def _url_fetcher(policy: FetchPolicy, cache_dir: Path) -> UrlFetcher:
    from .url_fetch import UrlFetcher

    return UrlFetcher(policy, cache_dir)


def _failure(error: SupervisorError) -> tuple[str, int, str]:
    return error.type, status_for(error), error.message


def _parse_json(raw: bytes) -> Any:
    try:
        return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except ValueError as exc:
        raise Reject(400, "bad_request", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Reject(400, "bad_request", "the request body is nested too deeply") from None


def _no_constant(name: str) -> Any:
    """JSON has no NaN or Infinity; Python's parser accepts them unless told not to."""
    raise ValueError(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
"""``json.loads(raw, parse_constant=...)`` without a new decoder per body."""


def _request_dir(root: Path) -> Path:
    """A request's directory for its uploads and fetched files: searchable but not
    listable by others, so that children running as another user (``--child-user``)
    can open the files they are given by name, and nobody can list them."""
    directory = Path(tempfile.mkdtemp(dir=root))
    directory.chmod(0o711)
    return directory


def _save(part: UploadFile, target: Path) -> None:
    part.file.seek(0)
    with open(target, "wb") as out:
        shutil.copyfileobj(part.file, out, 1 << 20)
    target.chmod(0o644)


async def _outcome(
    submitted: SubmittedRequest,
) -> tuple[ResultEvent | None, SupervisorError | None]:
    """Wait for a request's result or error, passing over its other events."""
    try:
        return await submitted.result(), None
    except SupervisorError as exc:
        return None, exc


async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, {"type": kind, "message": str(exc.detail)}, exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(500, {"type": "internal", "message": f"{type(exc).__name__}: {exc}"})


def public_paths() -> frozenset[str]:
    """Paths that need no token: health checks (probes carry none), and the docs and
    status pages with their assets (a browser opens them before it can be given the
    token; what they show comes from endpoints that need it)."""
    return PUBLIC_PATHS | {"/health/live", "/health/ready", "/", "/ui"} | asset_paths()


def create_app(
    apps: Mapping[str, App] | AppsFactory,
    settings: ServerSettings | None = None,
    gpus: GpuFigures | None = None,
    logs: RecentLogs | None = None,
) -> Starlette:
    """The ASGI app serving ``apps``: a mapping of running apps, or a factory of them.

    A factory is entered in the lifespan and yields running apps or a ``Startup``
    that starts them in the background (the server then answers health checks,
    and requests wait for their app, while they start); leaving it (at shutdown,
    after in-flight requests) stops them.
    ``gpus``, for ``/metrics``, returns the per-GPU figures of ``Supervisor.status()``;
    ``logs``, for the status page, may be attached before the server (and its apps) start.
    """
    settings = settings or ServerSettings()
    api = HttpApi(settings, gpus, logs)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if settings.upload_dir is not None:
            Path(settings.upload_dir).mkdir(parents=True, exist_ok=True)
        api.upload_root = Path(
            tempfile.mkdtemp(prefix="appvisor-uploads-", dir=settings.upload_dir)
        )
        api.logs.attach()
        api.upload_root.chmod(0o711)
        try:
            if isinstance(apps, Mapping):
                api.startup = started(apps)
                yield
            else:
                async with apps() as provided:
                    api.startup = provided if isinstance(provided, Startup) else started(provided)
                    yield
        finally:
            api.logs.detach()
            if api.fetcher is not None:
                await api.fetcher.aclose()
            shutil.rmtree(api.upload_root, ignore_errors=True)

    server = Server(
        calls=api.calls,
        routes=api.routes(),
        lifespan=lifespan,
        middleware=[
            Middleware(BearerAuth, token=settings.auth_token, public=public_paths()),
            Middleware(BodyGuard, limits=settings.limits),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    server.state.api = api
    return server
