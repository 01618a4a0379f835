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
import contextlib
import enum
import functools
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import anyio

from . import errors as E
from . import json_values
from .app import App
from .app_config import AppConfigError, open_app_dir, read_manifest
from .app_interpreter import app_interpreter
from .app_secrets import read_secrets_file
from .env_cache import ENV_CACHE_VAR, EnvCache
from .events import LogEvent, ProgressEvent, ResultEvent
from .log_setup import LOG_FORMATS, configure_logging
from .output_files import keep_output_files
from .supervisor import Supervisor

logger = logging.getLogger("supervisor.cli")

AUTH_TOKEN_ENV = "SUPERVISOR_AUTH_TOKEN"


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
    if isinstance(error, E.MissingSecretError):
        return ExitCode.USAGE
    if isinstance(error, E.EnvironmentFailedError):
        return ExitCode.APP_ERROR
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
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


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


def secrets_from_args(args: argparse.Namespace) -> dict[str, str]:
    """Secret values by key: the host's environment (``--secrets-from-env``), then
    each ``--secrets-file``, then each ``--secret``, later ones winning. Each app
    takes only the keys it declares."""
    values: dict[str, str] = dict(os.environ) if args.secrets_from_env else {}
    for path in args.secrets_file:
        try:
            values.update(read_secrets_file(path))
        except OSError as exc:
            raise UsageError(f"--secrets-file: {exc}") from None
    for item in args.secret:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError("--secret: expected KEY=VALUE")  # the value is never echoed
        values[key] = value
    return values


def supervisor_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Supervisor`` options that ``serve`` and ``run`` share."""
    return {
        "app_envs": not args.no_app_env,
        "env_cache": args.env_cache,
        "allow_host_python": args.allow_host_python,
        "strict": args.strict,
    }


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
    for key in ("errors", "traceback", "stderr", "requirement", "installer_output"):
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
    secrets = secrets_from_args(args)
    configure_logging(args.log_format, args.log_level)
    _show_env_progress()
    failures: list[BaseException] = []
    running: list[Supervisor] = []

    @contextlib.asynccontextmanager
    async def start_apps() -> AsyncIterator[Mapping[str, App]]:
        async with Supervisor(**supervisor_options(args)) as supervisor:
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
                        secrets=secrets,
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

    settings = ServerSettings(auth_token=token, allowed_paths=tuple(args.allow_path))
    config = uvicorn.Config(
        create_app(start_apps, settings, gpus=lambda: running[-1].gpu_status() if running else []),
        host=args.host,
        port=args.port,
        log_config=None,
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=args.shutdown_timeout,
        access_log=args.access_log,
    )
    server = uvicorn.Server(config)
    try:
        anyio.run(_serve, server, backend_options=_loop_options())
    except SystemExit as exc:  # uvicorn's way out when startup fails or it cannot bind
        if failures:
            return exit_code_for(failures[0])
        return ExitCode.RUNTIME if exc.code else ExitCode.OK
    if failures:
        return exit_code_for(failures[0])
    return ExitCode.OK if server.started else ExitCode.RUNTIME


def _loop_options() -> dict[str, Any]:
    """uvloop for the server when it is installed: it roughly halves the loop's cost."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


async def _serve(server: Any) -> None:
    """Serve until a signal; the signal then means "shut down", not "die"."""

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

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
    secrets = secrets_from_args(args)
    configure_logging(args.log_format, args.log_level)
    _show_env_progress()
    try:
        output = anyio.run(_run_once, app_dir, data, setup, secrets, args)
    except KeyboardInterrupt:
        return 130
    except E.SupervisorError as error:
        _report(error)
        return exit_code_for(error)
    sys.stdout.write(json_values.dumps(output) + "\n")
    sys.stdout.flush()
    return ExitCode.OK


async def _run_once(
    app_dir: Path,
    data: dict[str, Any],
    setup: dict[str, Any] | None,
    secrets: dict[str, str],
    args: argparse.Namespace,
) -> Any:
    output: Any = None
    async with Supervisor(**supervisor_options(args)) as supervisor:
        app = await supervisor.start(
            app_dir, setup=setup, gpus=args.gpus, run_timeout=args.run_timeout, secrets=secrets
        )
        async for event in app.stream(data, function=args.function):
            if isinstance(event, ResultEvent):
                output = event.output
            else:
                _report_event(event, args.log_format == "json")
        # Before the app unloads: its unload may delete them.
        schema = app.functions.get(args.function, {}).get("output_schema")
        try:
            output = keep_output_files(output, schema, Path(args.output_dir))
        except OSError as exc:
            raise E.SupervisorError(f"cannot keep the output files: {exc}") from exc
    return output


def _show_env_progress() -> None:
    """Building an environment takes minutes: its progress shows whatever the level."""
    env_logger = logging.getLogger("supervisor.env")
    if env_logger.getEffectiveLevel() > logging.INFO:
        env_logger.setLevel(logging.INFO)


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


def _schema_interpreter(app_dir: Path, args: argparse.Namespace) -> str:
    """The interpreter the app would run on (its environment built if needed)."""
    if args.no_app_env:
        return sys.executable
    try:
        directory, manifest = open_app_dir(app_dir)
    except AppConfigError as exc:
        raise E.LoadFailedError(str(exc)) from exc
    choice = anyio.run(
        functools.partial(
            app_interpreter,
            directory,
            manifest,
            cache=EnvCache(args.env_cache),
            allow_host_python=args.allow_host_python,
            on_progress=lambda line: logging.getLogger("supervisor.env").info("%s", line),
        )
    )
    return choice.python


def cmd_schema(args: argparse.Namespace) -> int:
    from .describe import describe_app

    app_dir = _app_dirs([args.app_dir])[0]
    configure_logging(args.log_format, args.log_level)
    _show_env_progress()
    try:
        description = describe_app(app_dir, python=_schema_interpreter(app_dir, args))
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


# -- env --------------------------------------------------------------------------


def cmd_env(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    cache = EnvCache(args.env_cache)
    if args.env_command == "list":
        for record in cache.records():
            sys.stdout.write(json.dumps(record.to_dict()) + "\n")
        return ExitCode.OK
    removed = cache.prune(older_than=args.older_than * 86400)
    for record in removed:
        print(f"removed {record.path} ({record.size / 2**20:.1f} MiB)", file=sys.stderr)
    print(f"{len(removed)} environment(s) removed from {cache.root}", file=sys.stderr)
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
    runtime.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a value for a secret the app declares in inf.yml (repeatable; visible to other "
        "users in the process list: prefer --secrets-file or --secrets-from-env)",
    )
    runtime.add_argument(
        "--secrets-file",
        action="append",
        default=[],
        metavar="FILE",
        help="secret values in dotenv format (KEY=VALUE lines; repeatable)",
    )
    runtime.add_argument(
        "--strict",
        action="store_true",
        help="fail a start for what is otherwise a warning: packages.txt entries not "
        "installed, GPUs declared on a machine without",
    )
    runtime.add_argument(
        "--secrets-from-env",
        action="store_true",
        help="take each declared secret from the host's variable of the same name",
    )

    app_env = argparse.ArgumentParser(add_help=False)
    app_env.add_argument(
        "--no-app-env",
        action="store_true",
        help="run every app on this interpreter, ignoring requirements files (development)",
    )
    app_env.add_argument(
        "--env-cache",
        default=None,
        metavar="DIR",
        help=f"where app environments are kept (default ${ENV_CACHE_VAR} or "
        "~/.cache/appvisor/envs)",
    )
    app_env.add_argument(
        "--allow-host-python",
        action="store_true",
        help="run an app whose kernel: names a Python that is not installed on this "
        "interpreter's version instead (with a warning)",
    )
    parser = argparse.ArgumentParser(
        prog="appvisor",
        description="Run inference.sh-style apps, each in a supervised child process.",
        epilog=EXIT_CODES_HELP,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        parents=[common, runtime, app_env],
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
    serve.set_defaults(handler=cmd_serve, default_level="info")

    run = commands.add_parser(
        "run",
        parents=[common, runtime, app_env],
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
    run.add_argument(
        "--output-dir",
        default=".",
        metavar="DIR",
        help="where output files are copied before the app unloads (default: the current "
        "directory); the printed output names the copies",
    )
    run.set_defaults(handler=cmd_run, default_level="warning")

    schema = commands.add_parser(
        "schema",
        parents=[common, app_env],
        help="print the app's functions and schemas",
        description="Print {name, functions: {NAME: {description, input_schema, output_schema, "
        "streaming}}, setup_schema} as JSON. The app is imported in a child; setup does not run.",
        epilog=EXIT_CODES_HELP,
    )
    schema.add_argument("app_dir", metavar="APP_DIR")
    schema.set_defaults(handler=cmd_schema, default_level="warning")

    env = commands.add_parser(
        "env",
        parents=[common],
        help="list or remove the apps' cached environments",
        description="Apps with a requirements file run in environments kept under a cache "
        "directory, one per requirements, interpreter and runtime version. 'list' prints one "
        "JSON object per environment; 'prune' removes them (not those being built). Do not "
        "prune environments that a running supervisor uses.",
    )
    env.add_argument("env_command", choices=("list", "prune"))
    env.add_argument("--env-cache", default=None, metavar="DIR", help="the cache directory")
    env.add_argument(
        "--older-than",
        type=float,
        default=0.0,
        metavar="DAYS",
        help="prune only environments not used for this many days (default: all)",
    )
    env.set_defaults(handler=cmd_env, default_level="warning")
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
