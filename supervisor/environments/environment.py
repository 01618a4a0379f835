"""The environment a child starts with: an allowlist, not the host's secrets.

A host service typically holds credentials in its environment; an app must
not inherit them. The child gets the variables needed to run Python, find
libraries and caches, and talk to GPUs, then the app's own ``env`` (from
``inf.yml`` and ``start(env=...)``), then the runtime's own variables, which
nothing may override: ``CUDA_VISIBLE_DEVICES`` pinned to the allocated GPUs and
the supervisor's pid for the parent-death check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .env_layout import runtime_path

ALLOWED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
        "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONWARNINGS",
        "PYTHONPATH",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_DEVICE_ORDER",
        "CUDA_CACHE_PATH",
        "CUDA_MODULE_LOADING",
        "PYTORCH_CUDA_ALLOC_CONF",
        "TORCH_HOME",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "TRANSFORMERS_CACHE",
        "TRANSFORMERS_OFFLINE",
        "XDG_CACHE_HOME",
        "FILE_CACHE_DIR",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "OPENBLAS_CORETYPE",
        "OPENBLAS_L2_SIZE",
        "NUMEXPR_NUM_THREADS",
        "TOKENIZERS_PARALLELISM",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "SUPERVISOR_FAKE_NVML",
    }
)
ALLOWED_PREFIXES = ("LC_", "NVIDIA_", "CUDA_", "NCCL_")
PARENT_PID = "SUPERVISOR_PARENT_PID"

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


def child_environment(
    app_env: Mapping[str, str],
    *,
    cuda_visible_devices: str,
    host: Mapping[str, str] | None = None,
    python: str | None = None,
) -> dict[str, str]:
    """``python``: the child's interpreter; one of an app's own environments gets
    that environment's runtime path instead of the supervisor's project root."""
    host = os.environ if host is None else host
    env = {
        key: value
        for key, value in host.items()
        if key in ALLOWED or key.startswith(ALLOWED_PREFIXES)
    }
    env.update(app_env)
    runtime = runtime_path(python) if python else None
    if runtime is None:
        # The runtime's own packages must be importable even from a source checkout.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
    else:
        # An app's own environment: only the runtime's links, never the host's
        # site-packages (they would shadow the app's pins), and its bin/ first on PATH.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (runtime, app_env.get("PYTHONPATH")) if p)
        env_dir = str(Path(python or "").parent.parent)
        env["VIRTUAL_ENV"] = env_dir
        env["PATH"] = os.pathsep.join(p for p in (f"{env_dir}/bin", env.get("PATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    env[PARENT_PID] = str(os.getpid())
    return env
