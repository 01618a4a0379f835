"""The metrics collector on its own, from status dicts shaped like ``App.status()``."""

from __future__ import annotations

from typing import Any

from http_helpers import metric_value

from supervisor.http.metrics import Metrics


class FakeApp:
    def __init__(self, status: dict[str, Any]) -> None:
        self._status = status

    def status(self) -> dict[str, Any]:
        return self._status


def test_status_figures_become_series() -> None:
    apps = {
        "swapped": FakeApp(
            {
                "ready": False,
                "restarts": 1,
                "restarts_by_reason": {"crash": 1},
                "evictions": 3,
                "queued": 2,
                "replicas": [{"slot": 0, "pid": None, "in_flight": 0, "memory": None}],
            }
        ),
        "bare": FakeApp({"ready": True, "replicas": []}),  # keys it lacks are skipped
    }
    text = Metrics(lambda: apps).render().decode()
    assert metric_value(text, "appvisor_evictions_total", app="swapped") == 3.0
    assert metric_value(text, "appvisor_restarts_total", app="swapped") == 1.0
    assert metric_value(text, "appvisor_restarts_by_reason_total", reason="crash") == 1.0
    assert metric_value(text, "appvisor_queued_requests", app="swapped") == 2.0
    assert metric_value(text, "appvisor_app_ready", app="swapped") == 0.0
    assert metric_value(text, "appvisor_app_ready", app="bare") == 1.0
    assert metric_value(text, "appvisor_evictions_total", app="bare") is None


def test_gpu_figures_become_gauges_per_gpu() -> None:
    gpus = [
        {"index": 0, "name": "A", "total": 80, "used": 30, "free": 50, "promised": 10},
        {"index": 1, "name": "B", "total": 40, "used": 0, "free": 40, "promised": 0},
    ]
    text = Metrics(dict, lambda: gpus).render().decode()
    assert metric_value(text, "appvisor_gpu_memory_total_bytes", gpu="0") == 80.0
    assert metric_value(text, "appvisor_gpu_memory_used_bytes", gpu="0") == 30.0
    assert metric_value(text, "appvisor_gpu_memory_free_bytes", gpu="1") == 40.0
    assert metric_value(text, "appvisor_gpu_memory_promised_bytes", gpu="0") == 10.0
    assert "appvisor_gpu_memory" not in Metrics(dict).render().decode()  # none without a source
