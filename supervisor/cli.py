"""The command line: ``python -m supervisor`` (installed as ``appvisor``).

    serve APP_DIR [APP_DIR ...]   HTTP server (uvicorn) in front of a Supervisor
    run APP_DIR                   one request; its output JSON on stdout, logs on stderr
    schema APP_DIR                the app's functions and schemas, without running setup

``serve`` runs uvicorn programmatically in the same event loop as the
Supervisor, which lives in the server's lifespan: apps start before the port
takes requests, and on SIGTERM/SIGINT the server stops accepting, lets
in-flight requests finish (up to ``--shutdown-timeout``), then unloads every
child and exits 0. A token is required to bind anything but loopback, since
the server runs code on request.

``run`` and ``schema`` are for scripts, so their exit status says what went
wrong; the codes are the ``ExitCode`` members below and nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import ipaddress
import json
import logging
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import anyio

from . import errors as E
from . import json_values
from .app import App
from .app_config import AppConfigError, read_manifest
from .events import LogEvent, ProgressEvent, ResultEvent
from .http_limits import HttpLimits, guarded_protocol
from .input_limits import InputLimits
from .log_setup import LOG_FORMATS, configure_logging
from .supervisor import Supervisor

logger = logging.getLogger("supervisor.cli")

AUTH_TOKEN_ENV = "SUPERVISOR_AUTH_TOKEN"
SHUTDOWN_MARGIN = 5.0
"""Seconds past ``--shutdown-timeout`` for the answers of stopped requests to leave."""


class ExitCode(enum.IntEnum):
    """Exit statuses of ``run`` and ``schema`` (and of ``serve`` when it cannot start)."""

    OK = 0
    USAGE = 2
    """Bad command line: unknown option, unreadable or malformed JSON, not a directory."""
    BAD_INPUT = 3
    """The input or setup did not validate, or the function does not exist."""
    APP_ERROR = 4
    """The app raised, or its setup or import failed."""
    RUNTIME = 5
    """The child crashed, timed out, ran out of memory, or another runtime failure."""


def exit_code_for(error: BaseException) -> ExitCode:
    if isinstance(error, (E.InputValidationError, E.UnknownFunctionError)):
        return ExitCode.BAD_INPUT
    if isinstance(error, E.OutOfMemoryError):
        return ExitCode.RUNTIME
    if isinstance(error, (E.AppExceptionError, E.SetupFailedError)):
        return ExitCode.APP_ERROR
    return ExitCode.RUNTIME


class UsageError(Exception):
    pass


class StartupFailed(Exception):
    """An app of ``serve`` could not start; the server does not either."""


# -- argument values --------------------------------------------------------------


def load_json_object(text: str, what: str) -> dict[str, Any]:
    """``JSON`` or ``@file`` (``@-`` reads stdin) holding a JSON object."""
    try:
        if text.startswith("@"):
            source = text[1:]
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        value = json.loads(text)
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {exc.filename}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{what}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def parse_gpus(text: str) -> int | tuple[int, ...]:
    """``2`` is a count of GPUs to allocate; ``0,1`` (or ``3,``) lists device indices."""
    try:
        if "," in text:
            return tuple(int(part) for part in text.split(",") if part.strip())
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count or a comma list, got {text!r}"
        ) from None
    if count < 0:
        raise argparse.ArgumentTypeError("a GPU count cannot be negative")
    return count


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a positive, finite number")
    return value


SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """A byte count: ``1048576``, ``512K``, ``32M``, ``1G`` (binary units; ``iB`` optional)."""
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = cleaned[-1:] if cleaned[-1:] in SIZE_UNITS else ""
    try:
        value = float(cleaned[: len(cleaned) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 32M, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError("a size must be at least 1 byte")
    return int(value * SIZE_UNITS[unit])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def setups_by_app(
    values: Sequence[str], app_dirs: Sequence[Path]
) -> dict[Path, dict[str, Any] | None]:
    """Each ``--setup`` is ``JSON|@file`` for every app, or ``NAME=JSON|@file`` for one."""
    shared: dict[str, Any] | None = None
    named: dict[str, dict[str, Any]] = {}
    for value in values:
        if value.startswith(("{", "@")):
            shared = load_json_object(value, "--setup")
            continue
        name, sep, rest = value.partition("=")
        if not sep:
            raise UsageError(f"--setup: expected JSON, @file or NAME=JSON, got {value!r}")
        named[name] = load_json_object(rest, f"--setup {name}")
    result: dict[Path, dict[str, Any] | None] = {}
    for directory in app_dirs:
        names = {directory.name, _manifest_name(directory)}
        result[directory] = next((named[n] for n in names if n in named), shared)
    unknown = set(named) - {n for d in app_dirs for n in (d.name, _manifest_name(d))}
    if unknown:
        raise UsageError(f"--setup names no served app: {', '.join(sorted(unknown))}")
    return result


def _manifest_name(directory: Path) -> str:
    try:
        return read_manifest(directory.resolve()).name
    except AppConfigError:
        return directory.name


def _app_dirs(values: Sequence[str]) -> list[Path]:
    dirs = [Path(v) for v in values]
    for directory in dirs:
        if not directory.is_dir():
            raise UsageError(f"{directory}: not a directory")
    return dirs


def _report(error: E.SupervisorError) -> None:
    print(f"error ({error.type}): {error.message}", file=sys.stderr)
    for key in ("errors", "traceback", "stderr"):
        if error.details.get(key):
            detail = error.details[key]
            text = json.dumps(detail, indent=2) if not isinstance(detail, str) else detail
            print(f"{key}:\n{text}", file=sys.stderr)


# -- serve ------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .http_server import ServerSettings, create_app

    token = args.auth_token or os.environ.get(AUTH_TOKEN_ENV) or None
    if token is None and not is_loopback(args.host):
        print(
            f"refusing to serve on {args.host!r} without authentication: a non-loopback address "
            f"needs --auth-token or {AUTH_TOKEN_ENV}",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    dirs = _app_dirs(args.app_dirs)
    setups = setups_by_app(args.setup, dirs)
    configure_logging(args.log_format, args.log_level)
    if args.ray is not None:
        return _serve_on_ray(args, dirs, setups, token)
    failures: list[BaseException] = []
    running: list[Supervisor] = []

    @contextlib.asynccontextmanager
    async def start_apps() -> AsyncIterator[Mapping[str, App]]:
        async with Supervisor() as supervisor:
            running.append(supervisor)
            apps: dict[str, App] = {}
            try:
                for directory in dirs:
                    app = await supervisor.start(
                        directory,
                        setup=setups[directory],
                        gpus=args.gpus,
                        replicas=args.replicas,
                        max_concurrency=args.max_concurrency,
                        run_timeout=args.run_timeout,
                        standby=args.standby,
                        lock_setup=args.lock_setup,
                        limits=input_limits,
                    )
                    apps[app.name] = app
            except E.SupervisorError as error:
                failures.append(error)
                logger.error("cannot start %s: %s (%s)", directory, error.message, error.type)
            else:
                yield apps
                return
        # Raised once the supervisor has stopped what did start.
        raise StartupFailed(f"{directory}: {failures[0]}")

    input_limits = InputLimits(max_depth=args.max_input_depth, max_values=args.max_input_values)
    http_limits = HttpLimits(
        max_body_size=args.max_body_size,
        max_upload_size=args.max_upload_size,
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
    )
    settings = ServerSettings(
        auth_token=token, allowed_paths=tuple(args.allow_path), limits=http_limits
    )
    config = uvicorn.Config(
        create_app(start_apps, settings, gpus=lambda: running[-1].gpu_status() if running else []),
        host=args.host,
        port=args.port,
        log_config=None,
        lifespan="on",
        ws="none",
        http=guarded_protocol(http_limits.header_timeout),
        limit_concurrency=http_limits.max_connections,
        timeout_keep_alive=http_limits.keep_alive_timeout,
        # Past --shutdown-timeout the apps are stopped, which answers what still runs
        # with 503 app_stopped; uvicorn's own deadline only has to let those out.
        timeout_graceful_shutdown=args.shutdown_timeout + SHUTDOWN_MARGIN,
        access_log=args.access_log,
    )

    async def stop_apps() -> None:
        if running:
            await running[-1].stop_all()

    server = _graceful_server(config, args.shutdown_timeout, stop_apps)
    try:
        anyio.run(_serve, server, backend_options=_loop_options())
    except SystemExit as exc:  # uvicorn's way out when startup fails or it cannot bind
        if failures:
            return exit_code_for(failures[0])
        return ExitCode.RUNTIME if exc.code else ExitCode.OK
    if failures:
        return exit_code_for(failures[0])
    return ExitCode.OK if server.started else ExitCode.RUNTIME


def _serve_on_ray(
    args: argparse.Namespace,
    dirs: Sequence[Path],
    setups: Mapping[Path, dict[str, Any] | None],
    token: str | None,
) -> int:
    """``serve --ray``: the apps as Ray Serve deployments (``ray_launch``)."""
    if args.gpus is not None:
        raise UsageError("--gpus does not apply with --ray: Ray assigns each replica's GPUs")
    try:
        deployments = setups_by_app(args.deployment_options, dirs)
    except UsageError as exc:
        raise UsageError(str(exc).replace("--setup", "--deployment-options")) from None
    try:
        from .ray_launch import DeployFailed, serve_on_ray
    except ImportError as exc:
        raise UsageError(f"--ray needs the ray extra (appvisor[ray]): {exc}") from None
    try:
        serve_on_ray(args, dirs, setups, deployments, token)
    except (DeployFailed, E.SupervisorError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.RUNTIME
    return ExitCode.OK


def _loop_options() -> dict[str, Any]:
    """uvloop for the server when it is installed: it roughly halves the loop's cost."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def _graceful_server(config: Any, grace: float, stop_apps: Callable[[], Awaitable[None]]) -> Any:
    """A uvicorn server that ends the requests still running ``grace`` seconds after
    a shutdown signal by stopping the apps, so that their clients get a JSON
    ``app_stopped`` (503) rather than a task cancelled by uvicorn's own deadline."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        asked: anyio.Event | None = None
        loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: Any = None) -> None:
            self.loop, self.asked = asyncio.get_running_loop(), anyio.Event()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._end_stragglers, self.asked)
                await super().serve(sockets)
                tasks.cancel_scope.cancel()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if self.loop is not None and self.asked is not None:
                # A signal handler may not touch the loop's state directly.
                self.loop.call_soon_threadsafe(self.asked.set)

        async def _end_stragglers(self, asked: anyio.Event) -> None:
            await asked.wait()
            await anyio.sleep(grace)
            await stop_apps()

    return GracefulServer(config)


async def _serve(server: Any) -> None:
    """Serve until a signal; the signal then means "shut down", not "die"."""

    def stop(signum: int, frame: FrameType | None) -> None:
        server.handle_exit(signum, frame)

    # uvicorn restores the handlers it found and re-raises the signal it caught
    # once it has shut down; finding ours, that re-raise is harmless and we exit 0.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        await server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- run --------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    app_dir = _app_dirs([args.app_dir])[0]
    if args.input is not None:
        data = load_json_object(args.input, "--input")
    elif (app_dir / "input.json").is_file():
        data = load_json_object(f"@{app_dir / 'input.json'}", "input.json")
    else:
        data = {}
    setup = load_json_object(args.setup, "--setup") if args.setup else None
    configure_logging(args.log_format, args.log_level)
    try:
        output = anyio.run(_run_once, app_dir, data, setup, args)
    except KeyboardInterrupt:
        return 130
    except E.SupervisorError as error:
        _report(error)
        return exit_code_for(error)
    sys.stdout.write(json_values.dumps(output) + "\n")
    sys.stdout.flush()
    return ExitCode.OK


async def _run_once(
    app_dir: Path, data: dict[str, Any], setup: dict[str, Any] | None, args: argparse.Namespace
) -> Any:
    output: Any = None
    async with Supervisor() as supervisor:
        app = await supervisor.start(
            app_dir, setup=setup, gpus=args.gpus, run_timeout=args.run_timeout
        )
        async for event in app.stream(data, function=args.function):
            if isinstance(event, ResultEvent):
                output = event.output
            else:
                _report_event(event, args.log_format == "json")
    return output


def _report_event(event: Any, as_json: bool) -> None:
    """An app's log line or progress report, on stderr."""
    fields: dict[str, Any]
    if isinstance(event, LogEvent):
        fields = {"event": "log", "stream": event.stream, "message": event.message.rstrip()}
        text = f"[{event.stream}] {fields['message']}"
    elif isinstance(event, ProgressEvent):
        fields = {"event": "progress", "fraction": event.fraction, "message": event.message}
        percent = "" if event.fraction is None else f" {event.fraction:.0%}"
        text = f"[progress]{percent} {event.message or ''}".rstrip()
    else:
        return
    print(json.dumps(fields) if as_json else text, file=sys.stderr, flush=True)


# -- schema -----------------------------------------------------------------------

FUNCTION_KEYS = ("description", "input_schema", "output_schema", "streaming")


def cmd_schema(args: argparse.Namespace) -> int:
    from .describe import describe_app

    app_dir = _app_dirs([args.app_dir])[0]
    configure_logging(args.log_format, args.log_level)
    try:
        description = describe_app(app_dir)
    except E.SupervisorError as exc:
        _report(exc)
        return exit_code_for(exc)
    functions = description.get("functions") or {}
    schema = {
        "name": description.get("name"),
        "functions": {
            name: {key: info.get(key) for key in FUNCTION_KEYS} for name, info in functions.items()
        },
        "setup_schema": description.get("setup_schema"),
    }
    sys.stdout.write(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
    return ExitCode.OK


# -- the parser -------------------------------------------------------------------

EXIT_CODES_HELP = (
    "exit codes: 0 success, 2 usage, 3 bad input (validation, unknown function), "
    "4 app error (exception, setup or import failed), 5 crash, timeout or other runtime failure"
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="stderr log format"
    )
    common.add_argument(
        "--log-level",
        default=None,
        help="logging level (default: info for serve, warning otherwise)",
    )
    runtime = argparse.ArgumentParser(add_help=False)
    runtime.add_argument(
        "--gpus",
        type=parse_gpus,
        default=None,
        help="a GPU count (e.g. 1) or device indices (e.g. 0,1); default: inf.yml",
    )
    runtime.add_argument(
        "--run-timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="fail a request that runs longer than this",
    )

    parser = argparse.ArgumentParser(
        prog="appvisor",
        description="Run inference.sh-style apps, each in a supervised child process.",
        epilog=EXIT_CODES_HELP,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        parents=[common, runtime],
        help="serve apps over HTTP",
        description="Serve one or more apps over HTTP. With several, each lives under "
        "/apps/{name}/; a single app is also served at the root. Endpoints: POST /run, "
        "/run/{function}, /cancel/{id}; GET /health, /openapi.json, /docs, /metrics, /files/...",
        epilog=f"The auth token can also come from ${AUTH_TOKEN_ENV} (preferred: a command line "
        "is visible to other users). " + EXIT_CODES_HELP,
    )
    serve.add_argument("app_dirs", nargs="+", metavar="APP_DIR")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument("--replicas", type=positive_int, default=1, help="child processes per app")
    serve.add_argument(
        "--max-concurrency", type=positive_int, default=1, help="requests one child runs at once"
    )
    serve.add_argument(
        "--standby",
        action="store_true",
        help="keep a spare child per replica with the app loaded, so that a restart "
        "only runs setup (doubles the app's import-time memory)",
    )
    serve.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="[NAME=]JSON|@FILE",
        help="setup values for every app, or with NAME= for one (repeatable)",
    )
    serve.add_argument(
        "--auth-token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' (all but /health); "
        "required for a non-loopback --host",
    )
    serve.add_argument(
        "--allow-path",
        action="append",
        default=[],
        metavar="DIR",
        help="accept local file paths as inputs under DIR (repeatable)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="how long in-flight requests may take to finish on shutdown",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log every HTTP request to stderr (off by default: it costs ~10%% per call)",
    )
    serve.add_argument(
        "--lock-setup",
        action="store_true",
        help="refuse requests whose setup values differ from --setup's (or the defaults)",
    )
    limits = serve.add_argument_group("limits", "what one client may cost the server")
    http_defaults, input_defaults = HttpLimits(), InputLimits()
    limits.add_argument(
        "--max-body-size",
        type=parse_size,
        default=http_defaults.max_body_size,
        metavar="SIZE",
        help="largest JSON body (and multipart 'request' part); default 32M",
    )
    limits.add_argument(
        "--max-upload-size",
        type=parse_size,
        default=http_defaults.max_upload_size,
        metavar="SIZE",
        help="largest multipart body, all uploads of a request together; default 1G",
    )
    limits.add_argument(
        "--max-input-depth",
        type=positive_int,
        default=input_defaults.max_depth,
        metavar="N",
        help=f"deepest nesting of an input or setup value; default {input_defaults.max_depth}",
    )
    limits.add_argument(
        "--max-input-values",
        type=positive_int,
        default=input_defaults.max_values,
        metavar="N",
        help=f"most values in one input or setup; default {input_defaults.max_values}",
    )
    limits.add_argument(
        "--max-connections",
        type=positive_int,
        default=http_defaults.max_connections,
        metavar="N",
        help=f"connections at once, beyond which the server answers 503; "
        f"default {http_defaults.max_connections}",
    )
    limits.add_argument(
        "--header-timeout",
        type=positive_float,
        default=http_defaults.header_timeout,
        metavar="SECONDS",
        help=f"close a connection whose request headers take longer; "
        f"default {http_defaults.header_timeout:g}",
    )
    limits.add_argument(
        "--body-timeout",
        type=positive_float,
        default=http_defaults.body_timeout,
        metavar="SECONDS",
        help=f"drop a client that stalls this long while sending its body (408); "
        f"default {http_defaults.body_timeout:g}",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        type=positive_int,
        default=http_defaults.keep_alive_timeout,
        metavar="SECONDS",
        help=f"close idle keep-alive connections (whole seconds); "
        f"default {http_defaults.keep_alive_timeout}",
    )
    on_ray = serve.add_argument_group(
        "ray", "serve on a Ray cluster (the ray extra): each replica a Ray actor with one child"
    )
    on_ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="deploy on Ray Serve: join the cluster at ADDRESS (e.g. auto), or start a local "
        "one; --replicas then counts Serve replicas, --host/--port are Serve's proxy",
    )
    on_ray.add_argument(
        "--min-replicas", type=int, default=None, metavar="N", help="autoscale from N replicas"
    )
    on_ray.add_argument(
        "--max-replicas", type=positive_int, default=None, metavar="N", help="autoscale up to N"
    )
    on_ray.add_argument(
        "--max-ongoing-requests",
        type=positive_int,
        default=4,
        metavar="N",
        help="requests one replica accepts at once (default 4)",
    )
    on_ray.add_argument(
        "--gpu-memory",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="memory of one GPU of the cluster: an app needing one GPU asks Ray for "
        "inf.yml's vram / SIZE of it, rounded up to 0.05 (default: a whole GPU)",
    )
    on_ray.add_argument(
        "--ray-num-cpus",
        type=float,
        default=0.5,
        metavar="N",
        help="CPUs Ray reserves per replica (default 0.5)",
    )
    on_ray.add_argument(
        "--deployment-options",
        action="append",
        default=[],
        metavar="[NAME=]JSON|@FILE",
        help="Serve deployment options for every app, or with NAME= for one (repeatable); "
        "they win over the options above",
    )
    serve.set_defaults(handler=cmd_serve, default_level="info")

    run = commands.add_parser(
        "run",
        parents=[common, runtime],
        help="run one request and print its output",
        description="Start the app, run one request and print its output as JSON on stdout "
        "(and nothing else); logs go to stderr.",
        epilog=EXIT_CODES_HELP,
    )
    run.add_argument("app_dir", metavar="APP_DIR")
    run.add_argument("--function", default="run", help="function to call (default run)")
    run.add_argument(
        "--input",
        default=None,
        metavar="JSON|@FILE",
        help="the input (default: APP_DIR/input.json; @- reads stdin)",
    )
    run.add_argument("--setup", default=None, metavar="JSON|@FILE", help="setup values")
    run.set_defaults(handler=cmd_run, default_level="warning")

    schema = commands.add_parser(
        "schema",
        parents=[common],
        help="print the app's functions and schemas",
        description="Print {name, functions: {NAME: {description, input_schema, output_schema, "
        "streaming}}, setup_schema} as JSON. The app is imported in a child; setup does not run.",
        epilog=EXIT_CODES_HELP,
    )
    schema.add_argument("app_dir", metavar="APP_DIR")
    schema.set_defaults(handler=cmd_schema, default_level="warning")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level is None:
        args.log_level = args.default_level
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
