"""The child's serving loop: one app, many requests, one protocol connection.

A reader callback on the event loop reads messages from the supervisor and
dispatches them: pings are answered at once, and setup, runs, cancels and the
unload go to long-lived worker tasks of one task group, so that pings and
cancels are answered while they work; sync app code runs in worker threads.
Every request ends with exactly one ``result`` or ``error``; before it is sent,
the request's captured output is drained so that its logs come first.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import sys
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import pydantic

from protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Check,
    Connection,
    Error,
    ErrorInfo,
    ErrorType,
    FieldError,
    Hello,
    Load,
    Message,
    Partial,
    Ping,
    Pong,
    Progress,
    ProtocolError,
    Result,
    Run,
    Setup,
    Shutdown,
    Unload,
    Unloaded,
    is_cuda_oom,
)

from . import __version__, exit_codes
from .app_loader import AppLoadError, LoadedApp, load_app
from .functions import AppFunction
from .import_record import imported_since
from .liveness import LivenessWatch
from .log_capture import PipeForwarder, RequestStream, current_request
from .metadata import make_metadata
from .outbox import Outbox
from .sdk_fallback import install_if_missing
from .wire_values import to_wire

READ_SIZE = 256 * 1024


class RequestFailed(Exception):
    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class ChildRuntime:
    def __init__(
        self,
        connection: Connection,
        outbox: Outbox,
        protocol_in: int,
        streams: tuple[RequestStream, RequestStream],
        forwarders: tuple[PipeForwarder, ...],
        exit_now: Callable[[int], object] | None = None,
    ) -> None:
        """``exit_now(status)``, when given, ends the process once serving is over
        (``python -m child`` passes ``os._exit``), so that shutdown, end of input and
        protocol errors do not wait for sync app code still running in a worker
        thread, which cannot be cancelled. Without it ``serve`` returns the status
        after that work has finished."""
        self._exit_now = exit_now
        self.connection = connection
        self.outbox = outbox
        self._in = protocol_in
        self._streams = streams
        self._forwarders = forwarders
        self.app: LoadedApp | None = None
        self._runs: dict[str, anyio.CancelScope] = {}
        self._runs_done = anyio.Event()
        self._serving: anyio.CancelScope | None = None
        self._ended = anyio.Event()
        """Set on shutdown, end of input or a protocol error; ``_status`` says which."""
        self._status = exit_codes.OK
        self._idle_workers: list[asyncio.Future[Callable[[], Awaitable[None]]]] = []
        self._initial_cwd = os.getcwd()
        self._inbox: deque[Message] = deque()
        """Messages read and not yet dispatched, in the order they came."""
        self._loop_reads = 0
        self._input_ended = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._modules_before: frozenset[str] = frozenset()
        """``sys.modules`` before the app was loaded: what a setup reports is the rest."""
        os.set_blocking(protocol_in, False)

    # -- entry points ---------------------------------------------------------

    async def serve(self, app_dir: str | None) -> int:
        """Serve until unload, shutdown or end of input; return the exit status."""
        self._modules_before = frozenset(sys.modules)
        description = None
        if app_dir is not None:
            try:
                description = self._load(app_dir, {})
            except RequestFailed as failure:
                self.outbox.send(self._hello(None))
                self.outbox.send(Error(id=None, error=failure.info))
                return exit_codes.LOAD_FAILED
        self.outbox.send(self._hello(description))
        loop = self._loop = asyncio.get_running_loop()
        liveness = LivenessWatch(self._in, lambda: self._loop_reads, self._read_from_thread)
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._serving = anyio.CancelScope()
            with self._serving:  # cancelled once an unload is complete
                loop.add_reader(self._in, self._on_readable)
                liveness.start()
                try:
                    self._on_readable()  # bytes that came with the hello's answer
                    await self._ended.wait()
                finally:
                    liveness.stop()
                    loop.remove_reader(self._in)
            status = self._status
            if self._exit_now is not None:
                self._exit_now(status)  # leaving the task group would wait for threads
            tasks.cancel_scope.cancel()
        return status

    def _hello(self, description: dict[str, Any] | None) -> Hello:
        shared = self.connection.blobs_in is not None and self.connection.blobs_out is not None
        return Hello(
            PROTOCOL_VERSION, os.getpid(), __version__, description, shared, features=["check"]
        )

    def _report_protocol_error(self, exc: ProtocolError) -> None:
        info = ErrorInfo(ErrorType.PROTOCOL, str(exc), exception=type(exc).__name__)
        with contextlib.suppress(ProtocolError, OSError):
            self.outbox.send(Error(id=None, error=info))

    def _on_readable(self) -> None:
        """Read what has arrived and dispatch every complete message.

        A loop callback rather than a task waiting for input: no task wakes up
        to read, and a request goes straight to a waiting worker, one turn of
        the loop instead of three.
        """
        if self._ended.is_set():
            return
        self._loop_reads += 1
        try:
            self._take_input(from_thread=False)
            self._dispatch_inbox()
        except ProtocolError as exc:
            self._protocol_failed(exc)
        except Exception:  # e.g. the supervisor closed our stdout: nobody to serve
            self._end(exit_codes.INTERNAL_ERROR)
            with contextlib.suppress(Exception):  # stderr may be that same broken pipe
                traceback.print_exc()

    def _take_input(self, *, from_thread: bool) -> list[Ping]:
        """Read what has arrived and queue its messages in the inbox; the pings are
        returned instead when the liveness thread reads, so that it answers them.

        The read is under the lock too: two readers must feed the connection in
        the order the bytes came.
        """
        pings: list[Ping] = []
        with self.outbox.lock:
            if self._input_ended:  # the other reader met the end first
                return pings
            try:
                data: bytes | None = os.read(self._in, READ_SIZE)
            except BlockingIOError:
                data = None
            if data is not None:
                self.connection.receive_data(data)
            for message in self.connection.events():
                if from_thread and isinstance(message, Ping):
                    pings.append(message)
                else:
                    self._inbox.append(message)
            release = self.connection.release_due()
            if data == b"":  # end of input: events() has raised if it cut a message
                self._input_ended = True
        if release is not None:
            self.outbox.send(release)  # the blobs were copied out: free their space
        return pings

    def _dispatch_inbox(self) -> None:
        while self._inbox and not self._ended.is_set():
            message = self._inbox.popleft()
            if isinstance(message, Shutdown):
                self._end(exit_codes.OK)
                return
            self._dispatch(message)
        if self._input_ended and not self._inbox:
            self._end(exit_codes.OK)

    def _read_from_thread(self) -> None:
        """The liveness thread's read, while app code blocks the loop."""
        if self._input_ended or self._loop is None:
            return
        try:
            pings = self._take_input(from_thread=True)
            for ping in pings:
                self.outbox.send(Pong(seq=ping.seq))
        except ProtocolError as exc:
            self._loop.call_soon_threadsafe(self._protocol_failed, exc)
            return
        except Exception:
            return  # the loop meets the same trouble on its next read, and handles it
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to hand over
            self._loop.call_soon_threadsafe(self._on_readable)

    def _protocol_failed(self, exc: ProtocolError) -> None:
        self._report_protocol_error(exc)
        self._end(exit_codes.PROTOCOL_ERROR)

    def _end(self, status: int) -> None:
        self._status = status
        self._ended.set()

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Ping):
            self.outbox.send(Pong(seq=message.seq))
        elif isinstance(message, Load):
            self._answer(
                message.id, partial(self._load, message.app_dir, message.env, message.describe)
            )
        elif isinstance(message, Check):
            self._answer(message.id, partial(self._check, message.config))
        elif isinstance(message, Setup):
            scope = self._runs[message.id] = anyio.CancelScope()
            self._spawn(partial(self._request, message.id, partial(self._setup, message), scope))
        elif isinstance(message, Run):
            scope = self._runs[message.id] = anyio.CancelScope()
            self._spawn(partial(self._request, message.id, partial(self._run, message), scope))
        elif isinstance(message, Cancel):
            self._spawn(partial(self._cancel, message.id))  # on_cancel may take a while
        elif isinstance(message, Unload):
            # In a worker: pings, cancels and a shutdown are still read meanwhile.
            self._spawn(self._unload)

    def _spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        """Hand a job to an idle worker task, or start one when none is idle.

        Workers are long-lived tasks of the serving task group: starting a task
        costs tens of microseconds, handing a job to a waiting one a few. Each
        idle worker waits on a future of its own, which the job resolves: a busy
        worker never holds a job back, so requests still run concurrently.
        """
        if self._idle_workers:
            self._idle_workers.pop().set_result(job)
        else:
            self._tasks.start_soon(self._worker, job)

    async def _worker(self, job: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await job()
            # No checkpoint between jobs: a plain future, not a stream's receive,
            # so a worker that is done costs no extra turn of the event loop.
            waiting: asyncio.Future[Callable[[], Awaitable[None]]] = loop.create_future()
            self._idle_workers.append(waiting)
            job = await waiting

    # -- requests -------------------------------------------------------------

    def _answer(self, request_id: str, work: Callable[[], Any]) -> None:
        """Run synchronous ``work`` for a request and send its outcome."""
        token = current_request.set(request_id)
        try:
            output = work()
        except RequestFailed as failure:
            self._finish(request_id, Error(id=request_id, error=failure.info))
        else:
            self._finish(request_id, Result(id=request_id, output=output))
        finally:
            current_request.reset(token)

    async def _request(
        self, request_id: str, work: Callable[[], Awaitable[Any]], scope: anyio.CancelScope
    ) -> None:
        """Run a setup or run under the cancel scope its dispatch registered, and send
        its one terminal message."""
        token = current_request.set(request_id)
        message: Message
        try:
            with scope:
                output = await work()
                message = Result(id=request_id, output=output)
        except RequestFailed as failure:
            message = Error(id=request_id, error=failure.info)
        except Exception as exc:  # a runtime bug must still end the request
            message = Error(id=request_id, error=_exception_info(exc, ErrorType.APP_EXCEPTION))
        finally:
            current_request.reset(token)
            self._runs.pop(request_id, None)
            self._runs_done.set()
        if scope.cancel_called:
            # Not only ``cancelled_caught``: sync work in a worker thread cannot be
            # interrupted, so it may still finish (or fail) after the cancel. Its
            # outcome is discarded and the request is answered ``cancelled``.
            message = Error(id=request_id, error=_cancelled())
        self._finish(request_id, message)

    def _finish(self, request_id: str, message: Message) -> None:
        for stream in self._streams:
            stream.flush_request(request_id)
        for forwarder in self._forwarders:
            forwarder.drain()
        self.outbox.send(message)

    def _load(
        self, app_dir: str, env: dict[str, str], describe: bool = True
    ) -> dict[str, Any] | None:
        if env:
            # A pre-started child takes on exactly the environment a fresh one would have.
            os.environ.clear()
            os.environ.update(env)
        try:
            os.chdir(app_dir)
            if sys.path and sys.path[0] == self._initial_cwd:
                sys.path[0] = os.path.abspath(app_dir)
            install_if_missing()
            self.app = load_app(app_dir)
            return self.app.describe() if describe else None
        except (AppLoadError, OSError) as exc:
            raise RequestFailed(_exception_info(exc, ErrorType.LOAD_FAILED)) from exc

    def _check(self, config: dict[str, Any]) -> None:
        """Validate setup values as ``setup`` would, without calling the app."""
        try:
            self._require_app().setup_args(config, None)
        except pydantic.ValidationError as exc:
            raise RequestFailed(_validation_info(exc, "setup config")) from exc

    async def _setup(self, message: Setup) -> dict[str, Any]:
        """Set the app up; the result names the library modules that loading and
        setting it up imported (``child.import_record``), for a fork server to preload."""
        app = self._require_app()
        metadata = self._metadata(message.id, message.metadata)
        try:
            args = app.setup_args(message.config, metadata)
        except pydantic.ValidationError as exc:
            raise RequestFailed(_validation_info(exc, "setup config")) from exc
        setup = getattr(app.app, "setup", None)
        if setup is not None:
            try:
                await _call(setup, args)
            except Exception as exc:
                raise RequestFailed(_exception_info(exc, ErrorType.SETUP_FAILED)) from exc
        return {"imports": imported_since(self._modules_before)}

    async def _run(self, message: Run) -> Any:
        app = self._require_app()
        function = app.functions.get(message.function)
        if function is None:
            raise RequestFailed(
                ErrorInfo(
                    ErrorType.UNKNOWN_FUNCTION,
                    f"the app has no function {message.function!r}; "
                    f"it has {', '.join(sorted(app.functions)) or 'none'}",
                )
            )
        try:
            if function.takes_files:
                # File validation may download: keep the loop free for pings and cancels.
                data = await anyio.to_thread.run_sync(function.validate_input, message.input)
            else:
                data = function.validate_input(message.input)
        except pydantic.ValidationError as exc:
            raise RequestFailed(_validation_info(exc, f"input of {function.name!r}")) from exc
        metadata = self._metadata(message.id, message.metadata) if function.wants_metadata else None
        args = function.call_args(data, metadata)
        try:
            if function.kind.endswith("_gen"):
                return await self._stream(message.id, function, args)
            if function.kind == "async":
                return to_wire(await function.method(*args))
            return to_wire(await _call(function.method, args))
        except anyio.get_cancelled_exc_class():
            raise
        except RequestFailed:
            raise
        except Exception as exc:
            raise RequestFailed(_exception_info(exc, ErrorType.APP_EXCEPTION)) from exc

    async def _stream(self, request_id: str, function: AppFunction, args: tuple[Any, ...]) -> Any:
        last: Any = None
        count = 0
        generator = function.method(*args)
        if function.kind == "async_gen":
            async for item in generator:
                last = to_wire(item)
                count += 1
                self.outbox.send(Partial(id=request_id, output=last))
        else:
            done = object()
            while (item := await anyio.to_thread.run_sync(next, generator, done)) is not done:
                last = to_wire(item)
                count += 1
                self.outbox.send(Partial(id=request_id, output=last))
        if count == 0:
            raise RequestFailed(
                ErrorInfo(ErrorType.APP_EXCEPTION, f"{function.name!r} yielded no output")
            )
        return last

    async def _cancel(self, request_id: str) -> None:
        scope = self._runs.get(request_id)
        if scope is None:
            return
        is_run = self.connection.requests.get(request_id) is Run
        on_cancel = getattr(self.app.app if self.app and is_run else None, "on_cancel", None)
        if on_cancel is not None:
            try:
                await _call(on_cancel, ())
            except Exception:
                logging.getLogger("child").exception("on_cancel raised")
        scope.cancel()

    async def _unload(self) -> None:
        for scope in list(self._runs.values()):
            scope.cancel()
        while self._runs:
            self._runs_done = anyio.Event()
            await self._runs_done.wait()
        if self.app is not None:
            unload = getattr(self.app.app, "unload", None)
            if unload is not None:
                try:
                    await _call(unload, ())
                except Exception:
                    logging.getLogger("child").exception("unload raised")
        for stream in self._streams:
            stream.flush_request(None)
        for forwarder in self._forwarders:
            forwarder.drain()
        self.outbox.send(Unloaded())
        if self._serving is not None:
            self._serving.cancel()

    # -- helpers --------------------------------------------------------------

    def _require_app(self) -> LoadedApp:
        if self.app is None:  # the state machine makes this unreachable
            raise RequestFailed(ErrorInfo(ErrorType.PROTOCOL, "no app is loaded"))
        return self.app

    def _metadata(self, request_id: str, fields: dict[str, Any]) -> object:
        def log(text: str) -> None:
            self.outbox.log(request_id, "log", text)

        def progress(
            fraction: float | None = None,
            message: str | None = None,
            *,
            current: float | None = None,
            total: float | None = None,
        ) -> None:
            self.outbox.progress(
                Progress(
                    id=request_id, fraction=fraction, current=current, total=total, message=message
                )
            )

        return make_metadata({"task_id": request_id, **fields}, log, progress)


async def _call(function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Call app code: coroutine functions on the loop, plain ones in a thread."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    result = await anyio.to_thread.run_sync(partial(function, *args))
    if inspect.isawaitable(result):
        return await result
    return result


def _cancelled() -> ErrorInfo:
    return ErrorInfo(ErrorType.CANCELLED, "the request was cancelled")


def _validation_info(exc: pydantic.ValidationError, what: str) -> ErrorInfo:
    errors = tuple(
        FieldError(loc=tuple(e["loc"]), msg=e["msg"], type=e["type"]) for e in exc.errors()
    )
    fields = "; ".join(f"{'.'.join(map(str, e.loc)) or '(root)'}: {e.msg}" for e in errors)
    return ErrorInfo(
        ErrorType.VALIDATION,
        f"invalid {what}: {fields}",
        exception="pydantic.ValidationError",
        errors=errors,
    )


def _exception_info(exc: BaseException, error_type: ErrorType) -> ErrorInfo:
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    message = str(exc) or cls.__name__
    if error_type is ErrorType.APP_EXCEPTION and is_cuda_oom(cls.__name__, message):
        error_type = ErrorType.OUT_OF_MEMORY
    text = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    return ErrorInfo(error_type, message, exception=name, traceback=text)


def install_streams(outbox: Outbox) -> tuple[RequestStream, RequestStream]:
    streams = (RequestStream("stdout", outbox.log), RequestStream("stderr", outbox.log))
    sys.stdout, sys.stderr = streams
    return streams
