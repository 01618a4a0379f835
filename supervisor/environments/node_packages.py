"""A Node.js app's npm dependencies, installed once per distinct manifest.

An app's ``package.json`` (and ``package-lock.json`` when it has one) is
installed into ``<cache>/node-packages/<key>``, the key being a hash of those
files' bytes and node's major version: apps with identical manifests share one
installation, and the app directory is never written to. The child finds the
packages by importing the app through a symbolic link to its directory made
inside the installation (``app_link``; node runs with ``--preserve-symlinks``,
so the app's bare imports resolve from the link's place, where the installed
``node_modules`` is the nearest one). A module resolution hook would do the same
without a link, but costs node a loader thread and makes every import slower
(about 90 ms, then zod's import twice as slow, on the 2-core machine).

An installation is built in a private temporary directory (``npm ci`` with a
lock, ``npm install`` without), its output logged line by line, and renamed
into place only when complete; a concurrent installer of the same key loses
the race harmlessly. A failure is an ``EnvironmentFailedError`` carrying npm's
last lines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..errors import EnvironmentFailedError

CACHE_ENV = "APPVISOR_CACHE_DIR"
PACKAGE_DIR_ENV = "APPVISOR_NODE_PACKAGE_DIR"
APP_LINK_ENV = "APPVISOR_NODE_APP_LINK"
INSTALL_TIMEOUT_ENV = "APPVISOR_NPM_TIMEOUT"
DEFAULT_INSTALL_TIMEOUT = 900.0
MANIFEST = "package.json"
LOCK = "package-lock.json"
TAIL_LINES = 20


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "appvisor"


def package_key(manifest: bytes, lock: bytes | None, node_major: int) -> str:
    """The cache key of an installation: identical inputs, identical packages."""
    digest = hashlib.sha256()
    for part in (manifest, b"\0lock\0", lock if lock is not None else b"(none)"):
        digest.update(part)
    digest.update(f"\0node-{node_major}".encode())
    return digest.hexdigest()[:24]


def app_packages(app_dir: Path, node_major: int, logger: logging.Logger) -> Path | None:
    """The directory holding the app's installed dependencies, or None when it has
    no ``package.json``."""
    manifest_path = app_dir / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = manifest_path.read_bytes()
    lock_path = app_dir / LOCK
    lock = lock_path.read_bytes() if lock_path.is_file() else None
    target = cache_root() / "node-packages" / package_key(manifest, lock, node_major)
    if target.is_dir():
        return target

    def prepare(directory: Path) -> None:
        (directory / MANIFEST).write_bytes(manifest)
        if lock is not None:
            (directory / LOCK).write_bytes(lock)

    install_packages(target, prepare, logger, what=f"the packages of {app_dir.name}")
    return target


def app_link(packages: Path, app_dir: Path) -> Path:
    """A link to ``app_dir`` inside ``packages``, named by a hash of its path; made
    (atomically) when missing or pointing elsewhere."""
    name = hashlib.sha256(str(app_dir).encode()).hexdigest()[:16]
    link = packages / "apps" / name
    if link.is_symlink() and os.readlink(link) == str(app_dir):
        return link
    link.parent.mkdir(exist_ok=True)
    temporary = link.parent / f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
    os.symlink(app_dir, temporary)
    os.replace(temporary, link)
    return link


def install_packages(
    target: Path, prepare: Callable[[Path], None], logger: logging.Logger, *, what: str
) -> None:
    """Fill a fresh directory with ``prepare``, run npm in it, and move it to ``target``."""
    npm = shutil.which("npm")
    if npm is None:
        raise EnvironmentFailedError(f"cannot install {what}: npm was not found on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}"
    work.mkdir()
    try:
        prepare(work)
        verb = "ci" if (work / LOCK).is_file() else "install"
        argv = [npm, verb, "--omit=dev", "--no-audit", "--no-fund", "--progress=false"]
        logger.info("installing %s: npm %s in %s", what, verb, work)
        started = time.monotonic()
        _run_logged(argv, work, logger, what)
        try:
            os.rename(work, target)
        except OSError:
            if not target.is_dir():
                raise
            logger.info("%s: another installer finished first; using its copy", what)
        else:
            logger.info("installed %s in %.1f s (%s)", what, time.monotonic() - started, target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _run_logged(argv: list[str], cwd: Path, logger: logging.Logger, what: str) -> None:
    timeout = float(os.environ.get(INSTALL_TIMEOUT_ENV) or DEFAULT_INSTALL_TIMEOUT)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    env = {**os.environ, "npm_config_update_notifier": "false"}
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise EnvironmentFailedError(f"cannot install {what}: {exc}") from exc
    assert process.stdout is not None
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        with process:
            for line in process.stdout:
                line = line.rstrip()
                if line:
                    tail.append(line)
                    logger.info("npm: %s", line)
    finally:
        timer.cancel()
    if process.returncode < 0:
        tail.append(f"(killed; the limit is {timeout:g} s, set by {INSTALL_TIMEOUT_ENV})")
    if process.returncode != 0:
        detail = "\n".join(tail)
        raise EnvironmentFailedError(
            f"cannot install {what}: npm {argv[1]} exited with {process.returncode}"
            + (f":\n{detail}" if detail else ""),
            installer_output=detail,
        )
