"""App directories as Ray Serve deployments: one endpoint in front of replicas on many nodes.

Each Serve replica is a Ray actor that owns a ``Supervisor`` running one child of
the app, so what one machine guarantees holds in every replica: process
isolation, crash restarts that keep the queue, VRAM budgets with pressure
eviction and admission, the inference.sh app contract. Its HTTP face is the
ASGI app that ``serve`` uses (``http_server.create_app``), handed to Serve late
(``__serve_build_asgi_app__``) so that it is built in the replica, after Ray has
placed it; the supervisor starts in that app's lifespan, which Serve runs before
the replica takes requests and again, to stop the child, when it retires it.

Ray does what one machine cannot: placement by free GPU and CPU, one HTTP proxy
in front of every replica, autoscaling, and a new replica when a node or an
actor is lost. GPUs come from Ray: a replica asks for ``gpu_request(...)`` GPUs
and its child is pinned to the devices Ray assigned to the actor
(``ray.get_gpu_ids()``), given to the supervisor as explicit indices.

Policy (``gpu_request``, ``pinned_gpus``, ``deployment_options``) is kept apart
from the Ray calls so that it can be tested without a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio.to_thread
import ray
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.app import App
from ..core.input_limits import InputLimits
from ..core.supervisor import Supervisor
from ..environments.app_config import open_app_dir
from ..errors import AdmissionError, SupervisorError
from ..http.server import ServerSettings, create_app
from ..http.wire import JSONResponse, error_response
from . import board

__all__ = [
    "GPU_STEPS",
    "AppReplica",
    "RayOptions",
    "build_app",
    "deployment_options",
    "gpu_request",
    "pinned_gpus",
    "serve_app",
]

logger = logging.getLogger("supervisor.ray")

GPU_STEPS = 20
"""A fractional GPU request is a multiple of 1/GPU_STEPS (0.05) of a device."""

NODE_HEADER = "x-appvisor-node"
REPLICA_HEADER = "x-appvisor-replica"

STATUS_PERIOD = 2.0
"""Seconds between a replica's posts to its app's status board."""
STATUS_TTL = 3 * STATUS_PERIOD
"""A replica that has not posted for this long is left out of ``/cluster/health``."""
CANCEL_WAIT = 5.0
"""Seconds a relayed cancel waits for the other replicas' answers."""
REPORTED = ("state", "ready", "available", "restarts", "evictions", "pids", "queued", "gpus")

# A child that is restarting is the supervisor's business, not a reason for Ray to
# replace the replica; only an app that gave up (or was stopped) is.
UNHEALTHY_STATES = frozenset({"failed", "stopped"})


# -- policy -----------------------------------------------------------------------


def gpu_request(
    count: int, vram: int | None, gpu_memory: int | None, steps: int = GPU_STEPS
) -> float:
    """The ``num_gpus`` a replica asks Ray for, from ``inf.yml``'s GPU count and VRAM.

    Ray knows GPUs only as counts, so a fraction needs the devices' memory
    (``gpu_memory``, bytes, the same on every node that may run the app): one
    GPU and a VRAM budget below it ask for ``ceil(vram / gpu_memory * steps) /
    steps``, i.e. rounded up to a 1/steps of a device. Several GPUs are whole
    (Ray allows fractions only below one), and without ``gpu_memory`` or a
    VRAM figure a GPU is a whole GPU: Ray never packs replicas that we could not
    check would fit.
    """
    if count < 0 or steps < 1:
        raise ValueError("count must be at least 0 and steps at least 1")
    if count != 1 or not vram or not gpu_memory:
        return float(count)
    return min(1.0, math.ceil(vram * steps / gpu_memory) / steps)


def pinned_gpus(ray_ids: Sequence[int | str]) -> tuple[int, ...]:
    """The device indices a child is pinned to: those Ray assigned to its actor.

    Ray reports ids as ints, or as the strings of ``CUDA_VISIBLE_DEVICES`` when a
    node was started with one; the supervisor takes NVML indices, so anything
    but an index (a UUID, ``MIG-...``) is refused instead of guessed.
    """
    pinned: list[int] = []
    for value in ray_ids:
        try:
            index = int(value)
        except ValueError:
            raise AdmissionError(
                f"Ray assigned GPU {value!r}, which is not a device index; start the "
                "Ray node with CUDA_VISIBLE_DEVICES as indices"
            ) from None
        if index not in pinned:
            pinned.append(index)
    return tuple(pinned)


@dataclass(frozen=True)
class RayOptions:
    """What a user picks for one app's deployment; the rest comes from ``inf.yml``."""

    num_replicas: int = 1
    """Replicas when not autoscaling (each one Ray actor, with one child)."""
    min_replicas: int | None = None
    max_replicas: int | None = None
    """Either bound turns on Serve's autoscaling between them."""
    max_ongoing_requests: int = 4
    """Requests a replica accepts at once (running and queued in its supervisor);
    past it, Serve's router tries another replica or waits."""
    num_gpus: float | None = None
    """Overrides ``gpu_request``'s figure."""
    gpu_memory: int | None = None
    """Bytes of memory of one GPU of the cluster, for fractional requests."""
    num_cpus: float = 0.5
    health_check_period_s: float = 5.0
    graceful_shutdown_timeout_s: float = 30.0
    max_constructor_retry_count: int = 3
    """Replica starts Serve tries before it fails the deployment (Serve's default is
    20); the supervisor already retried the child as its restart policy says."""
    deployment: Mapping[str, Any] = field(default_factory=dict)
    """Passed through to ``serve.deployment(...).options``; it wins over the above."""


def deployment_options(options: RayOptions, num_gpus: float) -> dict[str, Any]:
    """``Deployment.options(...)`` keyword arguments for one app."""
    result: dict[str, Any] = {
        "max_ongoing_requests": options.max_ongoing_requests,
        "health_check_period_s": options.health_check_period_s,
        "graceful_shutdown_timeout_s": options.graceful_shutdown_timeout_s,
        "max_constructor_retry_count": options.max_constructor_retry_count,
        "ray_actor_options": {"num_cpus": options.num_cpus, "num_gpus": num_gpus},
    }
    if options.min_replicas is not None or options.max_replicas is not None:
        low = options.min_replicas if options.min_replicas is not None else 1
        high = options.max_replicas if options.max_replicas is not None else max(low, 1)
        if low < 0 or high < max(low, 1):
            raise ValueError(f"autoscaling bounds make no sense: min {low}, max {high}")
        result["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
        }
    else:
        if options.num_replicas < 1:
            raise ValueError("num_replicas must be at least 1")
        result["num_replicas"] = options.num_replicas
    extra = dict(options.deployment)
    actor = {**result["ray_actor_options"], **dict(extra.pop("ray_actor_options", {}) or {})}
    result.update(extra)
    result["ray_actor_options"] = actor
    return result


# -- the replica ------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs to start its app; pickled to wherever Ray places it."""

    app_dir: str
    setup: Mapping[str, Any] | None = None
    max_concurrency: int = 1
    run_timeout: float | None = None
    lock_setup: bool = False
    standby: bool = False
    limits: InputLimits = field(default_factory=InputLimits)
    settings: ServerSettings = field(default_factory=ServerSettings)
    supervisor: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``Supervisor(...)``."""


class AppReplica:
    """One Serve replica: a supervisor running one child of one app, and its HTTP face."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.node_id: str = ray.get_runtime_context().get_node_id()
        self.replica_id: str = serve.get_replica_context().replica_id.unique_id
        self.gpus = pinned_gpus(ray.get_gpu_ids())
        self.supervisor: Supervisor | None = None
        self.apps: dict[str, App] = {}

    def __serve_build_asgi_app__(self) -> ASGIApp:
        server = create_app(self._running, self.spec.settings, gpus=self._gpu_figures)
        server.router.routes.append(Route("/cluster/health", self.cluster_health))
        # Ahead of the server's own /cancel, which knows only this replica's requests.
        server.router.routes.insert(0, Route("/cancel/{request_id}", self.cancel, methods=["POST"]))
        server.state.api.metrics.registry.register(ReplicaCollector(self))
        server.add_middleware(ReplicaHeaders, node=self.node_id, replica=self.replica_id)
        return server

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[Mapping[str, App]]:
        spec = self.spec
        async with Supervisor(**spec.supervisor) as supervisor:
            self.supervisor = supervisor
            try:
                app = await self._start(supervisor)
            except SupervisorError as exc:
                # Serve reports only that the lifespan failed: say why in the replica's log.
                logger.error("cannot start %s: %s (%s)", spec.app_dir, exc.message, exc.type)
                raise
            self.apps = {app.name: app}
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._post_status, app.name)
                    tasks.start_soon(self._relay_cancels, app)
                    yield self.apps
                    tasks.cancel_scope.cancel()
            finally:
                self.apps = {}
                with anyio.move_on_after(2.0, shield=True), contextlib.suppress(Exception):
                    await board.remove(app.name, self.replica_id)

    async def _post_status(self, app: str) -> None:
        """Tell the app's status board how this replica is, every ``STATUS_PERIOD``."""
        while True:
            try:
                await board.post(app, self.replica_id, self.report(), STATUS_TTL)
            except Exception as exc:  # the board is best effort; serving is not
                logger.warning("cannot post %s's status: %s", app, exc)
            await anyio.sleep(STATUS_PERIOD)

    async def _relay_cancels(self, app: App) -> None:
        """Cancel here what a cancel call that reached another replica asks for."""
        while True:
            try:
                for request_id in await board.pending_cancels(app.name, self.replica_id):
                    found = await app.cancel(request_id)
                    await board.answer_cancel(app.name, request_id, self.replica_id, found)
            except Exception as exc:  # best effort, like the status posts
                logger.warning("cannot relay %s's cancels: %s", app.name, exc)
            await anyio.sleep(board.CANCEL_POLL)

    async def cancel(self, request: Request) -> Response:
        """``POST /cancel/{id}``: here if this replica runs it, else relayed to the others."""
        request_id = request.path_params["request_id"]
        for app in self.apps.values():
            if await app.cancel(request_id) or await board.relay_cancel(
                app.name, request_id, self.replica_id, CANCEL_WAIT
            ):
                return JSONResponse({"cancelled": True, "request_id": request_id, "app": app.name})
        return error_response(
            404, {"type": "not_found", "message": f"no request {request_id!r} in flight"}
        )

    def report(self) -> dict[str, Any]:
        """This replica, as ``/cluster/health`` lists it."""
        apps = {}
        for name, app in self.apps.items():
            status = app.status()
            apps[name] = {key: status.get(key) for key in REPORTED}
        return {**self.identity(), "apps": apps}

    async def _start(self, supervisor: Supervisor) -> App:
        spec = self.spec
        return await supervisor.start(
            spec.app_dir,
            setup=spec.setup,
            gpus=self.gpus,
            max_concurrency=spec.max_concurrency,
            run_timeout=spec.run_timeout,
            lock_setup=spec.lock_setup,
            standby=spec.standby,
            limits=spec.limits,
        )

    def _gpu_figures(self) -> list[dict[str, Any]]:
        return self.supervisor.gpu_status() if self.supervisor is not None else []

    def check_health(self) -> None:
        """Serve's health check: an app that gave up makes Ray replace this replica."""
        for name, app in self.apps.items():
            state = app.status()["state"]
            if state in UNHEALTHY_STATES:
                raise RuntimeError(f"app {name} is {state} on node {self.node_id}")

    def identity(self) -> dict[str, Any]:
        return {"node": self.node_id, "replica": self.replica_id, "gpus": list(self.gpus)}

    async def cluster_health(self, request: Request) -> Response:
        """Every replica of this app, from the status board (this one's fresh), and
        every deployment's replica states as Serve's controller sees them.

        200 when at least one replica has every app available. Our health check
        feeds the controller's view: a replica whose app failed is UNHEALTHY
        there within a few ``health_check_period_s``.
        """
        replicas: dict[str, Any] = {}
        for name in self.apps:
            replicas.update(await board.read(name))
        replicas[self.replica_id] = self.report()
        status = await anyio.to_thread.run_sync(serve.status)
        deployments: dict[str, Any] = {}
        for application in status.applications.values():
            for name, deployment in application.deployments.items():
                counts = {str(k): v for k, v in deployment.replica_states.items()}
                deployments[name] = {"status": str(deployment.status), "replicas": counts}
        ready = any(
            entry["apps"] and all(app.get("available") for app in entry["apps"].values())
            for entry in replicas.values()
        )
        body = {
            "status": "ok" if ready else "unavailable",
            "replicas": replicas,
            "restarts": sum(
                app.get("restarts") or 0
                for entry in replicas.values()
                for app in entry["apps"].values()
            ),
            "answered_by": self.replica_id,
            "deployments": deployments,
        }
        return JSONResponse(body, status_code=200 if ready else 503)


class ReplicaHeaders:
    """Names the node and replica that answered, on every response."""

    def __init__(self, app: ASGIApp, node: str, replica: str) -> None:
        self.app = app
        self.extra = [
            (NODE_HEADER.encode(), node.encode()),
            (REPLICA_HEADER.encode(), replica.encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.extra]}
            await send(message)

        await self.app(scope, receive, tagged)


class ReplicaCollector(Collector):
    """``appvisor_replica_info{node, replica, app}``: which node's figures these are."""

    def __init__(self, replica: AppReplica) -> None:
        self.replica = replica

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "appvisor_replica_info",
            "The Ray node and Serve replica that served this scrape (always 1).",
            labels=["app", "node", "replica"],
        )
        for name in list(self.replica.apps) or [""]:
            family.add_metric([name, self.replica.node_id, self.replica.replica_id], 1)
        return [family]


# ``serve.ingress`` is typed as returning a callable, which hides the class from the overloads.
AppDeployment = cast(Deployment, serve.deployment(serve.ingress()(AppReplica)))


# -- building applications ----------------------------------------------------------


def serve_app(
    app_dir: str | Path,
    options: RayOptions | None = None,
    *,
    setup: Mapping[str, Any] | None = None,
    max_concurrency: int = 1,
    run_timeout: float | None = None,
    lock_setup: bool = False,
    standby: bool = False,
    limits: InputLimits | None = None,
    settings: ServerSettings | None = None,
    supervisor: Mapping[str, Any] | None = None,
) -> tuple[str, Application]:
    """The Serve application of one app directory, and the app's name (from inf.yml).

    ``serve.run(application, name=name, route_prefix=...)`` deploys it.
    """
    options = options or RayOptions()
    directory, manifest = open_app_dir(app_dir)
    num_gpus = (
        options.num_gpus
        if options.num_gpus is not None
        else gpu_request(manifest.gpu_count, manifest.vram, options.gpu_memory)
    )
    spec = ReplicaSpec(
        app_dir=str(directory),
        setup=setup,
        max_concurrency=max_concurrency,
        run_timeout=run_timeout,
        lock_setup=lock_setup,
        standby=standby,
        limits=limits or InputLimits(),
        settings=settings or ServerSettings(),
        supervisor=dict(supervisor or {}),
    )
    deployment = AppDeployment.options(name=manifest.name, **deployment_options(options, num_gpus))
    return manifest.name, deployment.bind(spec)


BUILDER_KEYS = {
    "num_replicas": int,
    "min_replicas": int,
    "max_replicas": int,
    "max_ongoing_requests": int,
    "num_gpus": float,
    "gpu_memory": int,
    "num_cpus": float,
}


def build_app(args: Mapping[str, str]) -> Application:
    """``serve run supervisor.ray.serve:build_app app_dir=DIR [num_replicas=2 ...]``.

    Keys: ``app_dir`` (required), ``run_timeout``, ``max_concurrency`` and the
    ``RayOptions`` numbers (``num_replicas``, ``min_replicas``, ``max_replicas``,
    ``max_ongoing_requests``, ``num_gpus``, ``gpu_memory`` in bytes, ``num_cpus``).
    """
    values = dict(args)
    if "app_dir" not in values:
        raise ValueError("build_app needs app_dir=DIR")
    app_dir = values.pop("app_dir")
    run_timeout = float(values.pop("run_timeout")) if "run_timeout" in values else None
    max_concurrency = int(values.pop("max_concurrency", "1"))
    unknown = set(values) - set(BUILDER_KEYS)
    if unknown:
        raise ValueError(f"unknown build_app keys: {', '.join(sorted(unknown))}")
    options = RayOptions(**{key: BUILDER_KEYS[key](text) for key, text in values.items()})
    return serve_app(app_dir, options, run_timeout=run_timeout, max_concurrency=max_concurrency)[1]
