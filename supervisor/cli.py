"""The command line: ``python -m supervisor`` (installed as ``appvisor``).

    serve APP_DIR [APP_DIR ...]   HTTP server (uvicorn) in front of a Supervisor
    run APP_DIR                   one request; its output JSON on stdout, logs on stderr
    schema APP_DIR                the app's functions and schemas, without running setup

``serve`` binds its port first (a port in use is a usage error before any app
is imported), then enters the Supervisor and starts the apps in the background
(``startup.Startup``), and only then imports the HTTP server, in a worker thread
while the loop drives the first children's start: on two cores the two overlap.
uvicorn then runs programmatically in the same event loop and answers health
checks while the apps still start; on SIGTERM/SIGINT it stops accepting, lets
in-flight requests finish (up to ``--shutdown-timeout``), then unloads every
child and exits 0. A token is
required to bind anything but loopback, since the server runs code on request.

``run`` and ``schema`` are for scripts, so their exit status says what went
wrong; the codes are the members of ``supervisor.errors.ExitCode``, and each error
class names its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import anyio.to_thread

from .app_traceback import for_people
from .core.app import App
from .core.input_limits import InputLimits
from .core.startup import AppStart, Startup
from .core.supervisor import Supervisor
from .environments.app_config import AppConfigError, open_app_dir, read_manifest
from .environments.app_interpreter import app_interpreter
from .environments.app_secrets import read_secrets_file
from .environments.env_cache import ENV_CACHE_VAR, EnvCache
from .environments.environment import child_environment
from .errors import ExitCode, LoadFailedError, SupervisorError
from .events import LogEvent, ProgressEvent, ResultEvent
from .http import json_values
from .http.fetch_policy import DEFAULT_MAX_BYTES as DEFAULT_FETCH_MAX_BYTES
from .http.fetch_policy import parse_allow
from .http.limits import HttpLimits, guarded_protocol
from .http.recent_logs import RecentLogs
from .log_setup import APP_LOGGER, LOG_FORMATS, configure_logging, log_progress
from .process import head_start
from .process.confinement import MODES as CONTAINMENT_MODES
from .process.confinement import Confinement, ConfinementError

logger = logging.getLogger("supervisor.cli")

AUTH_TOKEN_ENV = "SUPERVISOR_AUTH_TOKEN"
SHUTDOWN_MARGIN = 5.0
"""Seconds past ``--shutdown-timeout`` for the answers of stopped requests to leave."""


def exit_code_for(error: BaseException) -> ExitCode:
    """A failure's exit status: its class says (``exit_code``); anything else is a
    runtime failure."""
    if isinstance(error, SupervisorError):
        return error.exit_code
    return ExitCode.RUNTIME


class UsageError(Exception):
    pass


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


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("cannot be negative")
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
    served = {n for d in app_dirs for n in (d.name, _manifest_name(d))}
    for value in values:
        if value.lstrip().startswith(("{", "@")):
            shared = load_json_object(value, "--setup")
            continue
        name, sep, rest = value.partition("=")
        if not sep or name not in served:
            raise UsageError(
                f"--setup {value!r}: expected JSON ({setup_hint(value)}), @FILE, or NAME=JSON "
                f"for one app, NAME being a served app ({', '.join(sorted(served))})"
            )
        named[name] = load_json_object(rest, f"--setup {name}")
    result: dict[Path, dict[str, Any] | None] = {}
    for directory in app_dirs:
        names = {directory.name, _manifest_name(directory)}
        result[directory] = next((named[n] for n in names if n in named), shared)
    return result


def setup_hint(value: str) -> str:
    """What a ``key=value`` setup was probably meant to be, as JSON."""
    key, sep, rest = value.partition("=")
    if sep and key.strip():
        return "e.g. " + json.dumps({key.strip(): rest})
    return 'e.g. {"key": "value"}'


def load_setup(value: str) -> dict[str, Any]:
    """``run --setup``: JSON or @FILE (one app, so no NAME=)."""
    if not value.lstrip().startswith(("{", "@")):
        raise UsageError(f"--setup {value!r}: expected JSON ({setup_hint(value)}) or @FILE")
    return load_json_object(value, "--setup")


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


def error_details(error: SupervisorError, debug: bool) -> list[tuple[str, str]]:
    """An error's field errors, traceback (the app's frames only, unless ``debug``) and
    stderr, as text."""
    details = []
    for key in ("errors", "traceback", "stderr", "requirement", "installer_output"):
        detail = error.details.get(key)
        if not detail:
            continue
        if key == "traceback" and isinstance(detail, str) and not debug:
            detail = for_people(detail)
        text = json.dumps(detail, indent=2) if not isinstance(detail, str) else detail
        details.append((key, text.rstrip("\n")))
    return details


def _report(error: SupervisorError, debug: bool = False) -> None:
    print(f"error ({error.type}): {error.message}", file=sys.stderr)
    for key, text in error_details(error, debug):
        print(f"{key}:\n{text}", file=sys.stderr)


# -- serve ------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Bind, start the apps' first children, and only then load the HTTP server's
    modules (uvicorn, Starlette, the endpoints): on two cores the children's start
    and the server's imports overlap instead of adding up."""
    try:
        token = _auth_token(args)
    except OSError as exc:
        print(f"--auth-token-file: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if token is None and not is_loopback(args.host):
        print(
            f"refusing to serve on {args.host!r} without authentication: a non-loopback address "
            f"needs --auth-token or {AUTH_TOKEN_ENV}",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    try:
        confinement = Confinement(args.containment, args.child_user)
        confinement.check_interpreter(
            sys.executable, child_environment({}, cuda_visible_devices="")
        )
    except ConfinementError as exc:
        print(f"cannot confine the children: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        parse_allow(args.allow_fetch)
    except ValueError as exc:
        print(f"--allow-fetch: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    dirs = _app_dirs(args.app_dirs)
    setups = setups_by_app(args.setup, dirs)
    secrets = secrets_from_args(args)
    configure_logging(args.log_format, args.log_level)
    if args.ray is not None:
        return _serve_on_ray(args, dirs, setups, token)
    # Bound before anything starts: a port in use is a usage error, not a model
    # loaded for nothing.
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"cannot bind {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.USAGE
    _show_env_progress()
    serving = _Serving(args, token, confinement, dirs, setups, secrets)
    try:
        anyio.run(serving.run, sock, backend_options=_loop_options())
    except SystemExit as exc:  # uvicorn's way out when its startup fails
        if serving.failures:
            return exit_code_for(serving.failures[0])
        return ExitCode.RUNTIME if exc.code else ExitCode.OK
    except SupervisorError as error:  # the supervisor itself could not start
        _report(error, args.debug)
        return exit_code_for(error)
    finally:
        sock.close()
        head_start.discard()
    if serving.failures:
        return exit_code_for(serving.failures[0])
    if serving.server is None:  # stopped by a signal before the server was up
        return ExitCode.OK
    return ExitCode.OK if serving.server.started else ExitCode.RUNTIME


class _Serving:
    """One ``serve`` run: the supervisor and its apps' start, then the HTTP server."""

    def __init__(
        self,
        args: argparse.Namespace,
        token: str | None,
        confinement: Confinement,
        dirs: Sequence[Path],
        setups: Mapping[Path, dict[str, Any] | None],
        secrets: dict[str, str],
    ) -> None:
        self.args, self.token, self.confinement = args, token, confinement
        self.dirs, self.setups, self.secrets = dirs, setups, secrets
        self.failures: list[SupervisorError] = []
        self.supervisor: Supervisor | None = None
        self.server: Any = None
        self.stop_asked = False
        self.logs = RecentLogs()
        """Attached before the apps start, so that the status page shows their start."""

    def failed(self, name: str, error: SupervisorError) -> None:
        self.failures.append(error)
        logger.error(
            "cannot start %s: %s (%s)%s",
            name,
            error.message,
            error.type,
            "".join(f"\n{k}:\n{v}" for k, v in error_details(error, self.args.debug)),
        )
        if self.server is not None:
            self.server.should_exit = True

    async def run(self, sock: socket.socket) -> None:
        args = self.args

        def stop(signum: int, frame: FrameType | None) -> None:
            if self.server is not None:
                self.server.handle_exit(signum, frame)
            else:  # the server's modules are still loading: stop once they are
                self.stop_asked = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.logs.attach()
        ended: SystemExit | None = None
        try:
            async with (
                Supervisor(
                    containment=args.containment,
                    child_user=args.child_user,
                    **supervisor_options(args),
                ) as supervisor,
                anyio.create_task_group() as tasks,
            ):
                self.supervisor = supervisor
                early = head_start.take()
                if early is not None:
                    supervisor.pool.adopt(early)
                startup = Startup(
                    [AppStart(_manifest_name(d), self.starter(supervisor, d)) for d in self.dirs],
                    starting=supervisor.apps.get,
                    on_failure=self.failed,
                )
                tasks.start_soon(startup.run)
                # The children start (on the loop) while the server's modules load.
                build = await anyio.to_thread.run_sync(_load_http_server)
                if args.collector_paused:
                    _resume_collection()
                if not self.failures and not self.stop_asked:
                    self.server = build(self, startup)
                    try:
                        await self.server.serve(sockets=[sock])
                    except SystemExit as exc:  # raised as itself, not wrapped in a group
                        ended = exc
                tasks.cancel_scope.cancel()
        finally:
            self.logs.detach()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if ended is not None:
            raise ended

    def starter(self, supervisor: Supervisor, directory: Path) -> Callable[[], Awaitable[App]]:
        async def start() -> App:
            app = await self.start(supervisor, directory)
            if directory == self.dirs[0]:
                self.remember(supervisor, directory, app)
            return app

        return start

    @staticmethod
    def remember(supervisor: Supervisor, directory: Path, app: App) -> None:
        """What the first app's children start with, for the next ``serve``'s head start."""
        key = app.replicas[0].pool_key() if app.replicas else None
        if key is not None and key.runtime == "python" and supervisor.env_cache is not None:
            head_start.remember(supervisor.env_cache.root, directory, key.python, key.import_env)

    def start(self, supervisor: Supervisor, directory: Path) -> Awaitable[App]:
        args = self.args
        limits = InputLimits(max_depth=args.max_input_depth, max_values=args.max_input_values)
        return supervisor.start(
            directory,
            setup=self.setups[directory],
            gpus=args.gpus,
            replicas=args.replicas,
            max_concurrency=args.max_concurrency,
            run_timeout=args.run_timeout,
            standby=args.standby,
            lock_setup=args.lock_setup,
            limits=limits,
            secrets=self.secrets,
        )

    def http_limits(self) -> HttpLimits:
        args = self.args
        return HttpLimits(
            max_body_size=args.max_body_size,
            max_upload_size=args.max_upload_size,
            body_timeout=args.body_timeout,
            header_timeout=args.header_timeout,
            keep_alive_timeout=args.keep_alive_timeout,
            max_connections=args.max_connections,
        )

    def gpu_status(self) -> Sequence[Mapping[str, Any]]:
        return self.supervisor.gpu_status() if self.supervisor is not None else []

    async def stop_apps(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop_all()


def _resume_collection() -> None:
    """Turn the cyclic collector back on after the start's imports (``main``). What
    they made lives as long as the process: it is frozen out of the collector's
    way, with the few cycles they left, so that the first collection does not walk
    it all during the first requests."""
    gc.freeze()
    gc.enable()


def _load_http_server() -> Callable[[_Serving, Startup], Any]:
    """Import the HTTP server (in a worker thread, while the apps start); returns
    what builds it."""
    import uvicorn

    from .http.server import ServerSettings, create_app

    def build(serving: _Serving, startup: Startup) -> Any:
        args, limits = serving.args, serving.http_limits()
        user = serving.confinement.user
        settings = ServerSettings(
            auth_token=serving.token,
            allowed_paths=tuple(args.allow_path),
            limits=limits,
            allow_fetch=tuple(args.allow_fetch),
            fetch_max_bytes=args.fetch_max_bytes,
            output_file_owner=user.uid if user else None,
            start_wait=args.start_wait,
            sse_keepalive=args.sse_keepalive or None,
            debug=args.debug,
        )
        config = uvicorn.Config(
            create_app(
                lambda: contextlib.nullcontext(startup),
                settings,
                gpus=serving.gpu_status,
                logs=serving.logs,
            ),
            host=args.host,
            port=args.port,
            log_config=None,
            lifespan="on",
            ws="none",
            http=guarded_protocol(limits.header_timeout),
            limit_concurrency=limits.max_connections,
            timeout_keep_alive=limits.keep_alive_timeout,
            # Past --shutdown-timeout the apps are stopped, which answers what still runs
            # with 503 app_stopped; uvicorn's own deadline only has to let those out.
            timeout_graceful_shutdown=args.shutdown_timeout + SHUTDOWN_MARGIN,
            access_log=args.access_log,
        )
        return _graceful_server(config, args.shutdown_timeout, serving.stop_apps)

    return build


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket for ``serve``, bound before any app starts."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
    return sock


def _auth_token(args: argparse.Namespace) -> str | None:
    """The token from a file, the environment or (with a warning) the command line."""
    if args.auth_token_file is not None:
        return Path(args.auth_token_file).read_text().strip() or None
    if args.auth_token:
        print(
            "warning: --auth-token is visible to every local user in the process list; "
            f"use --auth-token-file or ${AUTH_TOKEN_ENV}",
            file=sys.stderr,
        )
        return str(args.auth_token)
    return os.environ.get(AUTH_TOKEN_ENV) or None


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
        from .ray.launch import DeployFailed, serve_on_ray
    except ImportError as exc:
        raise UsageError(f"--ray needs the ray extra (appvisor[ray]): {exc}") from None
    try:
        serve_on_ray(args, dirs, setups, deployments, token)
    except (DeployFailed, SupervisorError, ValueError) as exc:
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
            ended: SystemExit | None = None
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._end_stragglers, self.asked)
                try:
                    await super().serve(sockets)
                except SystemExit as exc:  # uvicorn's failed start: not wrapped in a group
                    ended = exc
                finally:
                    tasks.cancel_scope.cancel()
            if ended is not None:
                raise ended

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


# -- run --------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .http.input_fields import FieldSyntaxError, split_field  # what only `run` needs

    app_dir = _app_dirs([args.app_dir])[0]
    if args.input is not None:
        data = load_json_object(args.input, "--input")
    elif args.function == "run" and (app_dir / "input.json").is_file():
        data = load_json_object(f"@{app_dir / 'input.json'}", "input.json")
    else:
        data = {}
    for field in args.fields:
        try:
            split_field(field)
        except FieldSyntaxError as exc:
            raise UsageError(str(exc)) from None
    setup = load_setup(args.setup) if args.setup else None
    secrets = secrets_from_args(args)
    configure_logging(args.log_format, args.log_level, timestamps=False)
    _show_env_progress()
    try:
        output = anyio.run(_run_once, app_dir, data, setup, secrets, args)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except FieldSyntaxError as exc:
        raise UsageError(str(exc)) from None
    except SupervisorError as error:
        _report(error, args.debug)
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
    from .http.input_fields import apply_fields, unknown_fields
    from .http.output_files import keep_output_files
    from .start_display import show_start

    output: Any = None
    # One child, started at once: a pool or a fork server would only compete with it
    # for the CPU and be stopped unused.
    async with Supervisor(pool_size=0, **supervisor_options(args)) as supervisor:
        failure: SupervisorError | None = None
        async with anyio.create_task_group() as display:  # raises a failure as a group:
            if args.log_format == "text" and sys.stderr.isatty():
                name = _manifest_name(app_dir)
                display.start_soon(show_start, name, supervisor.apps.get, sys.stderr)
            try:
                app = await supervisor.start(
                    app_dir,
                    setup=setup,
                    gpus=args.gpus,
                    run_timeout=args.run_timeout,
                    secrets=secrets,
                )
            except SupervisorError as exc:  # so it is taken here, and raised as itself
                failure = exc
            display.cancel_scope.cancel()
        if failure is not None:
            raise failure
        schema = (app.functions.get(args.function) or {}).get("input_schema") or {}
        data = apply_fields(data, args.fields, schema)
        for name in unknown_fields(data, schema):
            known = ", ".join(sorted(schema.get("properties") or {})) or "none"
            logger.warning(
                "input field %r is not in the input schema of %s (it takes: %s); "
                "the app may ignore it",
                name,
                args.function,
                known,
            )
        async for event in app.stream(data, function=args.function):
            if isinstance(event, ResultEvent):
                output = event.output
            else:
                _report_event(app.name, event, args.log_format == "json")
        # Before the app unloads: its unload may delete them.
        schema = app.functions.get(args.function, {}).get("output_schema")
        try:
            output = keep_output_files(output, schema, Path(args.output_dir))
        except OSError as exc:
            raise SupervisorError(f"cannot keep the output files: {exc}") from exc
    return output


def _show_env_progress() -> None:
    """Building an environment takes minutes: its progress shows whatever the level."""
    env_logger = logging.getLogger("supervisor.env")
    if env_logger.getEffectiveLevel() > logging.INFO:
        env_logger.setLevel(logging.INFO)


def _report_event(app: str, event: Any, as_json: bool) -> None:
    """An app's log line or progress report, on stderr (text through the app's logger,
    which prefixes its name and draws progress as a bar on a terminal)."""
    if not as_json:
        app_logger = logging.getLogger(f"{APP_LOGGER}.{app}")
        if isinstance(event, LogEvent):
            app_logger.info("[%s] %s", event.stream, event.message.rstrip())
        elif isinstance(event, ProgressEvent):
            log_progress(app_logger, "run", event)
        return
    fields: dict[str, Any]
    if isinstance(event, LogEvent):
        fields = {"event": "log", "app": app, "stream": event.stream}
        fields["message"] = event.message.rstrip()
    elif isinstance(event, ProgressEvent):
        fields = {"event": "progress", "app": app, "fraction": event.fraction}
        fields["message"] = event.message
    else:
        return
    print(json.dumps(fields), file=sys.stderr, flush=True)


# -- schema -----------------------------------------------------------------------

FUNCTION_KEYS = ("description", "input_schema", "output_schema", "streaming")


def _schema_interpreter(app_dir: Path, args: argparse.Namespace) -> str:
    """The interpreter the app would run on (its environment built if needed)."""
    if args.no_app_env:
        return sys.executable
    try:
        directory, manifest = open_app_dir(app_dir)
    except AppConfigError as exc:
        raise LoadFailedError(str(exc)) from exc
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
    from .process.describe import describe_app

    app_dir = _app_dirs([args.app_dir])[0]
    configure_logging(args.log_format, args.log_level, timestamps=False)
    _show_env_progress()
    try:
        description = describe_app(app_dir, python=_schema_interpreter(app_dir, args))
    except SupervisorError as exc:
        _report(exc, args.debug)
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
    "exit codes: 0 success, 2 usage (bad option or value, port in use), 3 bad input "
    "(validation, unknown function), 4 app error (exception, setup or import failed), "
    "5 crash, timeout or other runtime failure, 130 interrupted"
)


class _Version(argparse.Action):
    """``--version``, worked out only when asked for: ``importlib.metadata`` would
    cost every ``serve`` start 10-30 ms."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, nargs=0, help="show the version and exit"
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_text(parser.prog))
        parser.exit()


def version_text(prog: str) -> str:
    """``appvisor X.Y.Z (protocol N)``: the package and the wire version it speaks."""
    from importlib.metadata import PackageNotFoundError, version

    from protocol import PROTOCOL_VERSION

    try:
        package = version("appvisor")
    except PackageNotFoundError:
        package = "unknown"
    return f"{prog} {package} (protocol {PROTOCOL_VERSION})"


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
    common.add_argument("--version", action=_Version)
    common.add_argument(
        "--debug",
        action="store_true",
        help="show the runtime's own frames in an app's tracebacks (hidden by default)",
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
    parser.add_argument("--version", action=_Version)
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
        "--auth-token-file",
        default=None,
        metavar="PATH",
        help="read the auth token from PATH (keeps it off the command line)",
    )
    serve.add_argument(
        "--child-user",
        default=None,
        metavar="NAME",
        help="run the apps' children as this unprivileged user (needs root; see Security)",
    )
    serve.add_argument(
        "--containment",
        choices=CONTAINMENT_MODES,
        default="auto",
        help="what holds each child's processes: a cgroup where the host allows it, "
        "else the child's subreaper (auto, the default); cgroup fails without cgroups",
    )
    serve.add_argument(
        "--allow-path",
        action="append",
        default=[],
        metavar="DIR",
        help="accept local file paths as inputs under DIR (repeatable)",
    )
    serve.add_argument(
        "--allow-fetch",
        action="append",
        default=[],
        metavar="HOST[:PORT]|CIDR",
        help="let file URLs reach this host or network although it is not public "
        "(loopback, private, link-local; refused by default) (repeatable)",
    )
    serve.add_argument(
        "--fetch-max-bytes",
        type=positive_int,
        default=DEFAULT_FETCH_MAX_BYTES,
        metavar="BYTES",
        help="largest file a URL input may fetch (default 1 GiB)",
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
    serve.add_argument(
        "--start-wait",
        type=non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="how long a request for an app that is still starting waits for it before a "
        "503 with Retry-After (default 30; 0 answers 503 at once)",
    )
    serve.add_argument(
        "--sse-keepalive",
        type=non_negative_float,
        default=15.0,
        metavar="SECONDS",
        help="send a ': keep-alive' comment on an event stream silent for this long "
        "(default 15; 0 never), so that proxies do not cut long waits",
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
        help="the input (default: APP_DIR/input.json for the run function; @- reads stdin)",
    )
    run.add_argument(
        "-i",
        dest="fields",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one input field, typed by the input schema (repeatable; @PATH: a file, for a "
        "File field its path, else its text); laid over --input (or input.json)",
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


def main(argv: Sequence[str] | None = None, *, collector_paused: bool = False) -> int:
    """``collector_paused``: the caller (``python -m supervisor``) has turned the
    cyclic garbage collector off for the start's imports; it is turned back on once
    they are done, for ``serve`` once the HTTP server's are too."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level is None:
        args.log_level = args.default_level
    args.collector_paused = collector_paused and args.command == "serve" and args.ray is None
    if collector_paused and not args.collector_paused:
        _resume_collection()
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
