"""The two records every GPU figure travels in: a device's memory and a sample.

They are apart from ``gpu_backend`` (which takes samples from a driver or a
fake file) so that what reads figures (process measurement, allocation, the
eviction policy) depends on the records only, never on the driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["DeviceMemory", "GpuSample"]


@dataclass(frozen=True)
class DeviceMemory:
    """One device's memory, in bytes, at the moment of a sample."""

    index: int
    """NVML index (PCI bus order); see ``gpu_allocation.gpu_environment``."""
    name: str
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class GpuSample:
    """All devices and every process's VRAM, taken together."""

    devices: tuple[DeviceMemory, ...]
    processes: Mapping[int, Mapping[int, int]]
    """Host pid -> {device index: bytes used}. Only processes using a device."""
    taken_at: float
    """``time.monotonic()`` when the sample was taken."""

    def device(self, index: int) -> DeviceMemory | None:
        """The device with this NVML index, or ``None``."""
        for device in self.devices:
            if device.index == index:
                return device
        return None

    def vram_of(self, pids: Iterable[int]) -> dict[int, int]:
        """Device index -> bytes used by ``pids`` together; devices they do not use are absent."""
        usage: dict[int, int] = {}
        for pid in pids:
            for index, used in self.processes.get(pid, {}).items():
                usage[index] = usage.get(index, 0) + used
        return usage
