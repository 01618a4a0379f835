"""Prometheus metrics for the HTTP server, in the text format ``prometheus_client`` writes.

Two kinds of figures: what the server sees happen (requests by outcome, their
latency), counted as requests finish, and what the supervisor knows about its
apps (cold start, restarts, readiness, memory), read from ``App.status()`` at
scrape time by a custom collector so that they are never stale. Each server has
its own ``CollectorRegistry``: two servers in one process (as in tests) never
share or double-register series.

Keys that a status may or may not carry (restarts by reason, a replica's
``memory`` figures) are reported when present and skipped otherwise; RSS falls
back to measuring the child's process tree from its pid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ..process.process_memory import tree_memory

PREFIX = "appvisor"
MAX_CACHED_SERIES = 4096
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class HasStatus(Protocol):
    def status(self) -> dict[str, Any]: ...


GpuFigures = Callable[[], Sequence[Mapping[str, Any]]]
"""The ``gpus`` list of ``Supervisor.status()``: index, total, used, free, promised."""


class Metrics:
    """The registry of one server, with the request counters it updates."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self, apps: Callable[[], Mapping[str, HasStatus]], gpus: GpuFigures | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests finished, by app, function and outcome (ok or the error type).",
            ["app", "function", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Seconds from receiving a request to its last byte of outcome.",
            ["app", "function"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        """Each (app, function, outcome)'s counter and histogram, looked up once."""
        self.registry.register(StatusCollector(apps))
        if gpus is not None:
            self.registry.register(GpuCollector(gpus))

    def observe(self, app: str, function: str, outcome: str, seconds: float) -> None:
        key = (app, function, outcome)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= MAX_CACHED_SERIES:
                self._series.clear()
            series = self._series[key] = (
                self.requests.labels(app, function, outcome),
                self.latency.labels(app, function),
            )
        series[0].inc()
        series[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StatusCollector(Collector):
    """Gauges and counters read from each app's ``status()`` when scraped."""

    def __init__(self, apps: Callable[[], Mapping[str, HasStatus]]) -> None:
        self._apps = apps

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            f"{PREFIX}_app_ready", "1 when the app has a ready replica.", labels=["app"]
        )
        cold = GaugeMetricFamily(
            f"{PREFIX}_cold_start_seconds",
            "Seconds from start() to every replica ready.",
            labels=["app"],
        )
        queued = GaugeMetricFamily(f"{PREFIX}_queued_requests", "Requests waiting.", labels=["app"])
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_in_flight_requests", "Requests running in children.", labels=["app"]
        )
        restarts = CounterMetricFamily(
            f"{PREFIX}_restarts",
            "Child restarts after a crash, kill or failed start.",
            labels=["app"],
        )
        evictions = CounterMetricFamily(
            f"{PREFIX}_evictions",
            "Children unloaded to free GPU memory; the app starts again on its next request.",
            labels=["app"],
        )
        by_reason = CounterMetricFamily(
            f"{PREFIX}_restarts_by_reason", "Child restarts by reason.", labels=["app", "reason"]
        )
        rss = GaugeMetricFamily(
            f"{PREFIX}_child_rss_bytes",
            "Host memory of a replica's process tree (PSS: shared pages counted once).",
            labels=["app", "replica"],
        )
        vram = GaugeMetricFamily(
            f"{PREFIX}_child_vram_bytes",
            "GPU memory of a replica's process tree, per device.",
            labels=["app", "replica", "gpu"],
        )
        for name, app in list(self._apps().items()):
            status = app.status()
            ready.add_metric([name], 1.0 if status.get("ready") else 0.0)
            if isinstance(status.get("cold_start"), (int, float)):
                cold.add_metric([name], float(status["cold_start"]))
            if isinstance(status.get("queued"), (int, float)):
                queued.add_metric([name], float(status["queued"]))
            replicas = [r for r in status.get("replicas", ()) if isinstance(r, Mapping)]
            in_flight.add_metric(
                [name], float(sum(_number(r.get("in_flight")) or 0 for r in replicas))
            )
            if isinstance(status.get("restarts"), (int, float)):
                restarts.add_metric([name], float(status["restarts"]))
            if isinstance(status.get("evictions"), (int, float)):
                evictions.add_metric([name], float(status["evictions"]))
            reasons = status.get("restarts_by_reason")
            if isinstance(reasons, Mapping):
                for reason, count in reasons.items():
                    if _number(count) is not None:
                        by_reason.add_metric([name, str(reason)], float(count))
            for replica in replicas:
                _replica_memory(name, replica, rss, vram)
        yield from (ready, cold, queued, in_flight, restarts, evictions, by_reason, rss, vram)


class GpuCollector(Collector):
    """Each GPU's memory, from the supervisor's latest sample, when scraped."""

    FIGURES = {
        "total": "Memory of the GPU.",
        "used": "Memory in use on the GPU, by any process.",
        "free": "Memory free on the GPU.",
        "promised": "VRAM budgets of apps on the GPU that their children do not use yet.",
    }

    def __init__(self, gpus: GpuFigures) -> None:
        self._gpus = gpus

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        families = {
            key: GaugeMetricFamily(f"{PREFIX}_gpu_memory_{key}_bytes", text, labels=["gpu"])
            for key, text in self.FIGURES.items()
        }
        for gpu in self._gpus():
            for key, family in families.items():
                value = _number(gpu.get(key))
                if value is not None:
                    family.add_metric([str(gpu.get("index"))], value)
        yield from families.values()


def _replica_memory(
    app: str, replica: Mapping[str, Any], rss: GaugeMetricFamily, vram: GaugeMetricFamily
) -> None:
    slot = str(replica.get("slot", "0"))
    pid = replica.get("pid")
    memory = replica.get("memory")
    figures: Mapping[str, Any] = memory if isinstance(memory, Mapping) else replica
    measured = _number(figures.get("rss"))
    if not measured and isinstance(pid, int):  # no sample yet, or one of a child now gone
        measured = float(tree_memory(pid)) or None
    if measured is not None and pid is not None:
        rss.add_metric([app, slot], measured)
    by_device = figures.get("vram_by_device")
    if isinstance(by_device, Mapping) and by_device:
        for device, used in by_device.items():
            if _number(used) is not None:
                vram.add_metric([app, slot, str(device)], float(used))
    else:
        total = _number(figures.get("vram"))
        if total is not None and pid is not None:
            vram.add_metric([app, slot, "all"], total)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
