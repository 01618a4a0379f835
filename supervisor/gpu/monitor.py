"""One loop that samples GPU and host memory for every registered child.

The supervisor needs fresh memory figures for three things: enforcing budgets,
relieving pressure, and admitting new apps. Rather than each of those asking
NVML and walking process trees on its own, ``ResourceMonitor`` does it once per
``interval`` for all children together and hands the result, a frozen
``MonitorSnapshot``, to a callback (the resource governor) that applies the
policies in ``eviction_policy``: this module only measures. Admission, which
cannot wait for the next tick, asks for a snapshot of its own with ``refresh``
(or the blocking ``sample_now``).

NVML calls and ``/proc`` walks can block, so a round runs in a worker thread.
A failing backend (driver hiccup, a fake file being rewritten badly) must not
take memory protection down: the error is logged, the round still measures
RSS, and the snapshot carries ``gpu_error`` with no devices. The loop only ends
when cancelled. Who opened the backend closes it; the monitor never does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from ..process.process_memory import pids_memory, tree_pids
from .backend import GpuBackend
from .sample import DeviceMemory, GpuSample

__all__ = ["ChildUsage", "Members", "MonitorSnapshot", "OnSample", "ResourceMonitor"]

logger = logging.getLogger("supervisor.gpu_monitor")


@dataclass(frozen=True)
class ChildUsage:
    """Memory used by one child's process tree at ``sampled_at``."""

    key: str
    pid: int
    rss: int
    """Bytes of host RAM over the tree, shared pages counted once (PSS; 0 if the
    process is gone). Named for the metric and status field it has always fed."""
    vram_by_device: Mapping[int, int]
    """Device index -> bytes over the tree; devices it does not use are absent."""
    sampled_at: float
    """``time.monotonic()``."""
    alive: bool = True
    """False when the root pid no longer existed at sampling time."""

    @property
    def vram(self) -> int:
        return sum(self.vram_by_device.values())

    def to_dict(self) -> dict[str, Any]:
        """As a replica's status shows it."""
        return {
            "rss": self.rss,
            "vram": self.vram,
            "vram_by_device": {str(k): v for k, v in self.vram_by_device.items()},
            "sampled_at": self.sampled_at,
        }


@dataclass(frozen=True)
class MonitorSnapshot:
    """One sampling round: the devices' memory and each registered child's use."""

    devices: tuple[DeviceMemory, ...]
    """Empty when there is no backend or it failed this round (see ``gpu_error``)."""
    children: Mapping[str, ChildUsage]
    """Registered key -> usage, for every child registered when the round began."""
    taken_at: float
    """``time.monotonic()``."""
    gpu_error: str | None = None
    """Why the backend gave no figures this round; ``None`` when it did (or there is none)."""
    processes: Mapping[int, Mapping[int, int]] = field(default_factory=dict)
    """The raw per-pid VRAM of the backend sample, all processes included."""


OnSample = Callable[[MonitorSnapshot], Awaitable[None]]
Members = Callable[[], list[int]]
"""The pids of a watched tree, root first; ``[]`` once it is gone."""


class ResourceMonitor:
    def __init__(
        self,
        backend: GpuBackend | None,
        interval: float,
        on_sample: OnSample | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.backend = backend
        self.interval = interval
        self.on_sample = on_sample
        self.latest: MonitorSnapshot | None = None
        self._pids: dict[str, int] = {}
        self._members: dict[str, Members] = {}
        self._backend_lock = threading.Lock()
        self._last_error: str | None = None

    # -- registrations ------------------------------------------------------------

    def register(self, key: str, pid: int, members: Members | None = None) -> None:
        """Watch the process tree rooted at ``pid`` under ``key`` (replacing any earlier pid).

        ``members`` lists the tree's pids, root first (``[]`` once it is gone), where
        the caller knows a cheaper way than walking the process table."""
        self._pids[key] = pid
        if members is None:
            self._members.pop(key, None)
        else:
            self._members[key] = members

    def unregister(self, key: str) -> None:
        """Stop watching ``key``; unknown keys are ignored."""
        self._pids.pop(key, None)
        self._members.pop(key, None)

    @property
    def registered(self) -> Mapping[str, int]:
        return dict(self._pids)

    # -- sampling -----------------------------------------------------------------

    def sample_now(self) -> MonitorSnapshot:
        """Take a snapshot now, blocking the caller; also stored as ``latest``."""
        snapshot = self._collect(dict(self._pids), dict(self._members))
        self.latest = snapshot
        return snapshot

    async def refresh(self, host_memory: bool = True) -> MonitorSnapshot:
        """``sample_now`` in a worker thread, so the event loop keeps running.

        ``host_memory=False`` (an admission, which weighs VRAM only) keeps each
        child's host memory figure from the last sample instead of reading it again:
        a process's PSS costs about a millisecond to read."""
        registrations, members = dict(self._pids), dict(self._members)
        snapshot = await anyio.to_thread.run_sync(
            self._collect, registrations, members, host_memory
        )
        self.latest = snapshot
        return snapshot

    async def run(self) -> None:
        """Sample every ``interval`` seconds and call ``on_sample``, until cancelled.

        With no backend and nothing registered there is nothing to measure, and
        the round is skipped (no snapshot, no callback).
        """
        while True:
            if self.backend is not None or self._pids:
                snapshot = await self.refresh()
                if self.on_sample is not None:
                    try:
                        await self.on_sample(snapshot)
                    except Exception:
                        logger.exception("on_sample callback failed; monitoring continues")
            await anyio.sleep(self.interval)

    def _collect(
        self,
        registrations: Mapping[str, int],
        members: Mapping[str, Members],
        host_memory: bool = True,
    ) -> MonitorSnapshot:
        sample, error = self._sample_backend()
        earlier = self.latest.children if self.latest is not None and not host_memory else {}
        children = {}
        for key, pid in registrations.items():
            listed = members.get(key)
            pids = listed() if listed is not None else tree_pids(pid)
            last = earlier.get(key)
            children[key] = ChildUsage(
                key=key,
                pid=pid,
                rss=last.rss if last is not None and last.pid == pid else pids_memory(pids),
                vram_by_device=sample.vram_of(pids) if sample is not None else {},
                sampled_at=time.monotonic(),
                alive=bool(pids),
            )
        if sample is None:
            return MonitorSnapshot((), children, time.monotonic(), error)
        return MonitorSnapshot(sample.devices, children, sample.taken_at, None, sample.processes)

    def _sample_backend(self) -> tuple[GpuSample | None, str | None]:
        if self.backend is None:
            return None, None
        # One sample at a time: the loop's worker thread and a caller of
        # ``sample_now`` may both get here, and they share ``_last_error``.
        with self._backend_lock:
            return self._sample_backend_locked(self.backend)

    def _sample_backend_locked(self, backend: GpuBackend) -> tuple[GpuSample | None, str | None]:
        try:
            sample = backend.sample()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._last_error:
                # Once per distinct error: a broken driver would otherwise log every tick.
                logger.warning("GPU backend %s failed: %s", backend.name, error)
            else:
                logger.debug("GPU backend %s still failing: %s", backend.name, error)
            self._last_error = error
            return None, error
        if self._last_error is not None:
            logger.info("GPU backend %s recovered", backend.name)
            self._last_error = None
        return sample, None
