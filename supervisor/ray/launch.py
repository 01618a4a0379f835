"""``serve APP_DIR ... --ray [ADDRESS]``: deploy apps on a Ray cluster and hold them until a signal.

With an address (``auto``, ``ray://...``, ``HOST:PORT``) it joins a running
cluster, and Serve's HTTP proxy there (started with ``--host``/``--port`` if
Serve is not running yet); without one it starts a local cluster for the
command's lifetime. Each app directory becomes one Serve application named
after the app: served at ``/`` when it is alone, at ``/apps/{name}/``
otherwise. SIGINT or SIGTERM deletes the applications (Serve retires the
replicas, whose supervisors unload their children) and, for a local cluster,
stops Ray.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import ray
from ray import serve
from ray.serve.exceptions import RayServeException

from ..core.input_limits import InputLimits
from ..http.limits import HttpLimits
from ..http.server import ServerSettings
from .serve import RayOptions, serve_app

logger = logging.getLogger("supervisor.ray")


class DeployFailed(Exception):
    """An app could not be deployed (Ray refused it, or its replicas did not start)."""


def route_prefix(name: str, served: int) -> str:
    return "/" if served == 1 else f"/apps/{name}"


def options_from_args(args: argparse.Namespace, deployment: Mapping[str, Any]) -> RayOptions:
    return RayOptions(
        num_replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        gpu_memory=args.gpu_memory,
        num_cpus=args.ray_num_cpus,
        graceful_shutdown_timeout_s=args.shutdown_timeout,
        deployment=deployment,
    )


def serve_on_ray(
    args: argparse.Namespace,
    dirs: Sequence[Path],
    setups: Mapping[Path, dict[str, Any] | None],
    deployments: Mapping[Path, dict[str, Any] | None],
    token: str | None,
) -> None:
    """Deploy every app, wait for SIGINT/SIGTERM, then take them down."""
    local = not args.ray
    ray.init(
        # "local": a new cluster even when one runs here; with no address at all, Ray
        # would join the one named in /tmp/ray/ray_current_cluster.
        address="local" if local else args.ray,
        include_dashboard=False if local else None,
        log_to_driver=True,
    )
    names: list[str] = []
    stop = threading.Event()

    def asked(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, asked) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        settings = ServerSettings(
            auth_token=token,
            allowed_paths=tuple(args.allow_path),
            limits=HttpLimits(
                max_body_size=args.max_body_size,
                max_upload_size=args.max_upload_size,
                body_timeout=args.body_timeout,
            ),
        )
        limits = InputLimits(max_depth=args.max_input_depth, max_values=args.max_input_values)
        for directory in dirs:
            name, application = serve_app(
                directory,
                options_from_args(args, deployments.get(directory) or {}),
                setup=setups.get(directory),
                max_concurrency=args.max_concurrency,
                run_timeout=args.run_timeout,
                lock_setup=args.lock_setup,
                standby=args.standby,
                limits=limits,
                settings=settings,
            )
            try:
                serve.run(application, name=name, route_prefix=route_prefix(name, len(dirs)))
            except RayServeException as exc:  # refused, nothing deployed
                raise DeployFailed(f"{directory}: {exc}") from exc
            except RuntimeError as exc:  # deployed, but its replicas did not start
                names.append(name)
                raise DeployFailed(
                    f"{directory}: {exc}\n(the app's own error is in the replica logs: "
                    "/tmp/ray/session_latest/logs/ on its node: serve/replica_*.log, worker-*.err)"
                ) from exc
            names.append(name)
            logger.info("deployed %s at %s", name, route_prefix(name, len(dirs)))
        while not stop.wait(0.5):
            pass
        logger.info("stopping: deleting %s", ", ".join(names))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for name in names:
            serve.delete(name)
        if local:
            serve.shutdown()
            ray.shutdown()
