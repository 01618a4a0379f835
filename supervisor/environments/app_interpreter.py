"""Which interpreter runs an app's children: the supervisor's, or the app's own environment.

An app with ``requirements.lock`` or ``requirements.txt`` runs in an
environment built from it (``env_cache``) for the Python its ``kernel:`` names;
one without keeps the fast path, the supervisor's own interpreter, as do all
apps when environments are off (``--no-app-env``). A named Python that is not
installed is an error, unless the host's may stand in (``--allow-host-python``),
which is then a warning.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ..errors import InterpreterMissingError, LoadFailedError
from .app_config import AppManifest
from .env_cache import EnvCache
from .env_spec import EnvSpec, env_spec, requirements_file
from .interpreters import find_interpreter, host_interpreter, requested_version

logger = logging.getLogger("supervisor.env")


@dataclass
class AppInterpreter:
    """The interpreter an app's children run, and what status shows of it."""

    python: str
    info: dict[str, Any]
    """For status: the interpreter, its version and the environment's key."""
    warnings: list[str] = field(default_factory=list)


def plan_environment(
    directory: Path, manifest: AppManifest, *, allow_host_python: bool
) -> tuple[EnvSpec | None, list[str]]:
    """The environment the app needs (None: the supervisor's own interpreter) and
    the warnings that choice comes with."""
    host = host_interpreter()
    try:
        version = requested_version(manifest.kernel)
    except ValueError as exc:
        raise LoadFailedError(f"{directory / 'inf.yml'}: {exc}") from exc
    if requirements_file(directory) is None:
        # No environment to build: the fast path, whatever the kernel asks for.
        if version is None or version == host.minor:
            return None, []
        return None, [
            f"kernel {manifest.kernel!r} asks for Python {version}, but the app has no "
            f"requirements file: running on the supervisor's Python {host.version}"
        ]
    warnings: list[str] = []
    interpreter = find_interpreter(version) if version else host
    if interpreter is None:
        if not allow_host_python:
            raise InterpreterMissingError(
                f"{manifest.name}: kernel {manifest.kernel!r} needs Python {version}, which is "
                "not installed (looked for the supervisor's own, pyenv's and uv's Pythons, and "
                f"python{version} on PATH); install it, or allow the host's Python "
                f"{host.version} with --allow-host-python",
                kernel=manifest.kernel,
                python_version=version,
            )
        warnings.append(
            f"kernel {manifest.kernel!r} needs Python {version}, which is not installed: "
            f"running on the host's Python {host.version} instead"
        )
        interpreter = host
    spec = env_spec(directory, interpreter)
    return spec, warnings


async def app_interpreter(
    directory: Path,
    manifest: AppManifest,
    *,
    cache: EnvCache | None,
    allow_host_python: bool = False,
    on_build: Callable[[EnvSpec], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> AppInterpreter:
    """The interpreter for the app's children, its environment built if needed.

    ``on_build`` is called before a build starts (not for a ready environment).
    """
    if cache is None:
        return AppInterpreter(sys.executable, {"python": sys.executable, "env": None})
    spec: EnvSpec | None = None
    warnings: list[str] = []
    # The fast path needs no worker thread; looking for an interpreter runs some.
    if manifest.kernel is not None or requirements_file(directory) is not None:
        spec, warnings = await anyio.to_thread.run_sync(
            functools.partial(
                plan_environment, directory, manifest, allow_host_python=allow_host_python
            )
        )
    for warning in warnings:
        logger.warning("%s: %s", manifest.name, warning)
    if spec is None:
        host = host_interpreter()
        info = {"python": host.path, "python_version": host.version, "env": None}
        return AppInterpreter(sys.executable, info, warnings)
    if on_build is not None and not cache.is_ready(spec):
        on_build(spec)
    python = await cache.ensure(spec, on_progress)
    info = {
        "python": python,
        "python_version": spec.python.version,
        "env": spec.key,
        "requirements": spec.requirements.name,
    }
    return AppInterpreter(python, info, warnings)
