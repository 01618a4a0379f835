"""What a Node.js app's children need: a node recent enough, and the JavaScript
child runtime (``child/node/``) with its own dependencies.

The runtime's dependencies (a msgpack codec, a Zod to JSON Schema converter)
are locked in ``child/node/package-lock.json``. A checkout that ran ``npm ci``
there (``.ci/run`` does) uses them in place; otherwise the runtime is copied,
on first use, into a cache directory named by a hash of its files and
installed there with ``npm ci``, so an installed package is never written to.

The version rule is a pure function (``check_version``); the rest is mechanism.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnvironmentFailedError
from .app_config import AppManifest
from .node_packages import (
    APP_LINK_ENV,
    PACKAGE_DIR_ENV,
    app_link,
    app_packages,
    cache_root,
    install_packages,
)

logger = logging.getLogger("supervisor.node")

CHILD_SOURCE = Path(__file__).resolve().parents[2] / "child" / "node"
MINIMUM_VERSION = (18, 0, 0)
"""The oldest node the child runtime supports (worker threads, AsyncLocalStorage, and
its dependencies' own floor)."""
ALLOW_OLDER_ENV = "APPVISOR_ALLOW_OLDER_NODE"
"""Set to 1 to run an app on a node older than its ``kernel: node-N`` asks, with a warning."""
NODE_ENV = "APPVISOR_NODE"
"""The node executable to use (default: ``node`` on PATH)."""

Version = tuple[int, int, int]


def parse_version(text: str) -> Version | None:
    match = re.match(r"\s*v?(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def kernel_major(kernel: str | None) -> int | None:
    """The node major version a ``kernel:`` such as ``node-22`` asks for."""
    match = re.fullmatch(r"node-?(\d+)(?:\.\d+)*", (kernel or "").strip().lower())
    return int(match[1]) if match else None


def check_version(found: Version, kernel: str | None, allow_older: bool) -> str | None:
    """None when ``found`` serves ``kernel``, a warning when it is older but allowed;
    raises ``EnvironmentFailedError`` otherwise."""
    shown = ".".join(map(str, found))
    if found < MINIMUM_VERSION:
        raise EnvironmentFailedError(
            f"node {shown} is too old for the child runtime, which needs "
            f"{'.'.join(map(str, MINIMUM_VERSION))} or newer"
        )
    wanted = kernel_major(kernel)
    if wanted is None or found[0] >= wanted:
        return None
    text = f"the app asks for {kernel} but node is {shown}"
    if not allow_older:
        raise EnvironmentFailedError(
            f"{text}; install node {wanted} or newer, or set {ALLOW_OLDER_ENV}=1 to run it anyway"
        )
    return f"{text}; running it anyway ({ALLOW_OLDER_ENV} is set)"


def find_node(kernel: str | None, env: dict[str, str] | None = None) -> tuple[str, Version]:
    environ = os.environ if env is None else env
    node = environ.get(NODE_ENV) or shutil.which("node")
    if not node:
        raise EnvironmentFailedError(
            f"this is a Node.js app ({kernel or 'inference.js'}) but no node executable was found "
            f"on PATH (or in ${NODE_ENV})"
        )
    version = _version_of(os.path.abspath(node), _mtime(node))
    warning = check_version(version, kernel, environ.get(ALLOW_OLDER_ENV, "") not in ("", "0"))
    if warning:
        logger.warning("%s", warning)
    return os.path.abspath(node), version


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


@functools.lru_cache(maxsize=16)
def _version_of(node: str, mtime: int) -> Version:
    """``node --version``, asked once per executable (and again if it is replaced):
    running node costs tens of milliseconds of every start."""
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvironmentFailedError(f"cannot run {node} --version: {exc}") from exc
    version = parse_version(out)
    if version is None:
        raise EnvironmentFailedError(f"{node} --version printed {out.strip()!r}, not a version")
    return version


def child_runtime_dir() -> Path:
    """The child runtime with its dependencies installed: in place, or a cached copy."""
    if (CHILD_SOURCE / "node_modules").is_dir():
        return CHILD_SOURCE
    digest = hashlib.sha256()
    files = sorted(p for p in CHILD_SOURCE.iterdir() if p.is_file())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    target = cache_root() / "node-child" / digest.hexdigest()[:16]
    if (target / "node_modules").is_dir():
        return target

    def prepare(directory: Path) -> None:
        for path in files:
            shutil.copy2(path, directory / path.name)

    install_packages(target, prepare, logger, what="the Node.js child runtime")
    return target


@dataclass(frozen=True)
class NodeApp:
    """What starting a Node.js app's children takes."""

    node: str
    version: Version
    env: dict[str, str]
    """Variables its children need: where its installed packages are, and the link
    to the app through which they are found."""


def prepare_node_app(app_dir: Path, manifest: AppManifest) -> NodeApp:
    """Find node, check it against the app's ``kernel:``, make sure the child runtime
    and the app's packages are installed. Blocking (npm may run): call it in a thread.
    Raises ``EnvironmentFailedError``."""
    node, version = find_node(manifest.kernel)
    child_runtime_dir()
    packages = app_packages(
        app_dir, version[0], logging.getLogger(f"supervisor.app.{manifest.name}")
    )
    if packages is None:
        return NodeApp(node, version, {})
    env = {PACKAGE_DIR_ENV: str(packages), APP_LINK_ENV: str(app_link(packages, app_dir))}
    return NodeApp(node, version, env)
