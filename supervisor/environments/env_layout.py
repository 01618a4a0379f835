"""Where a cached environment keeps what marks it complete and the runtime's own
packages. Apart from ``env_cache``, which builds environments, so that a child's
environment (``environment``) can be made without importing the builder."""

from __future__ import annotations

from pathlib import Path

MARKER = "appvisor-env.json"
RUNTIME_DIR = "appvisor-runtime"


def runtime_path(python: str) -> str | None:
    """The runtime's directory for an environment's interpreter, or None for
    an interpreter that is not one of ours."""
    env = Path(python).parent.parent
    runtime = env / RUNTIME_DIR
    return str(runtime) if (env / MARKER).is_file() and runtime.is_dir() else None
