"""Where a cached environment keeps what marks it complete and the runtime's own
packages. Apart from ``env_cache``, which builds environments, so that a child's
environment (``environment``) can be made without importing the builder."""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE_VAR = "APPVISOR_ENV_CACHE"
MARKER = "appvisor-env.json"
RUNTIME_DIR = "appvisor-runtime"


def runtime_path(python: str) -> str | None:
    """The runtime's directory for an environment's interpreter, or None for
    an interpreter that is not one of ours."""
    env = Path(python).parent.parent
    runtime = env / RUNTIME_DIR
    return str(runtime) if (env / MARKER).is_file() and runtime.is_dir() else None


def default_root() -> Path:
    """The environment cache: ``$APPVISOR_ENV_CACHE``, else the user's cache directory."""
    if os.environ.get(ENV_CACHE_VAR):
        return Path(os.environ[ENV_CACHE_VAR])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "appvisor" / "envs"
