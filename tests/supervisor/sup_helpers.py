"""Helpers shared by the supervisor's process-level tests."""

from __future__ import annotations

from typing import Any

from supervisor import RestartPolicy, Supervisor


def make_supervisor(**overrides: Any) -> Supervisor:
    """A supervisor with short grace periods and a small restart budget, no GPUs."""
    options: dict[str, Any] = {
        "gpu_backend": None,
        "cancel_grace": 0.5,
        "unload_timeout": 2.0,
        "restart_policy": RestartPolicy(max_restarts=2, window=30),
    }
    options.update(overrides)
    return Supervisor(**options)
