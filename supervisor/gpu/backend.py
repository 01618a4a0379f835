"""Where GPU memory figures come from: NVML on a real machine, a JSON file in tests.

Everything above this module (allocation, eviction, the monitor) works on two
small frozen records, ``DeviceMemory`` and ``GpuSample``, and never talks to a
driver. A ``GpuBackend`` is the only thing that does, and it has one job: take
a ``GpuSample`` now. Keeping the seam this narrow is what lets the policies be
pure functions and lets the whole supervisor run, unchanged, on a machine with
no GPU (``open_backend`` returns ``None``) or on a CI runner that pretends to
have one (``SUPERVISOR_FAKE_NVML`` points at a JSON file that the test or a fake
app rewrites to simulate memory pressure).

Process figures are keyed by *host* pid, as NVML reports them. A supervisor
running in a container without the host's pid namespace sees other pids than
NVML does; per-child VRAM then reads as zero while the device totals stay right.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import psutil

from .sample import DeviceMemory, GpuSample

__all__ = [
    "FAKE_NVML_ENV",
    "MIB",
    "DeviceMemory",
    "FakeNvmlBackend",
    "GpuBackend",
    "GpuBackendError",
    "GpuSample",
    "NvmlBackend",
    "open_backend",
]

logger = logging.getLogger("supervisor.gpu_backend")

FAKE_NVML_ENV = "SUPERVISOR_FAKE_NVML"
"""Environment variable naming a JSON file that stands in for NVML."""

MIB = 1024 * 1024
NVML_LIBRARY = "libnvidia-ml.so.1"
"""The driver's library, as pynvml loads it on Linux."""


class GpuBackendError(RuntimeError):
    """The backend could not produce a sample (driver error, bad fake file)."""


class GpuBackend(Protocol):
    """A source of ``GpuSample``s. ``sample`` may block (call it off the loop)."""

    name: str

    def sample(self) -> GpuSample:
        """Take a sample now; raise ``GpuBackendError`` if that is impossible."""
        ...

    def close(self) -> None:
        """Release the driver. Idempotent."""
        ...


# -- NVML -----------------------------------------------------------------------


class NvmlBackend:
    """The real thing: device and per-process memory through ``pynvml``.

    ``nvmlInit`` runs once, in the constructor, which raises ``pynvml.NVMLError``
    (``NVMLError_LibraryNotFound`` on a machine without the driver) if NVML is
    unusable. Device handles and names are read once too; a GPU does not come
    and go under a running supervisor. ``nvml`` replaces the ``pynvml`` module,
    for tests.
    """

    name = "nvml"

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml: Any = nvml
        self._nvml.nvmlInit()
        self._open = True
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
            self._handles: list[tuple[int, str, Any]] = []
            for index in range(count):
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                name = self._nvml.nvmlDeviceGetName(handle)
                if isinstance(name, bytes):  # pynvml < 11.5 returned bytes
                    name = name.decode("utf-8", "replace")
                self._handles.append((index, str(name), handle))
        except BaseException:
            self.close()
            raise

    @property
    def device_count(self) -> int:
        return len(self._handles)

    def sample(self) -> GpuSample:
        if not self._open:
            raise GpuBackendError("NVML backend is closed")
        devices: list[DeviceMemory] = []
        processes: dict[int, dict[int, int]] = {}
        try:
            for index, name, handle in self._handles:
                info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                devices.append(
                    DeviceMemory(
                        index=index,
                        name=name,
                        total=int(info.total),
                        used=int(info.used),
                        free=int(info.free),
                    )
                )
                for pid, used in self._device_processes(handle).items():
                    processes.setdefault(pid, {})[index] = used
        except self._nvml.NVMLError as exc:
            raise GpuBackendError(f"NVML query failed: {exc}") from exc
        return GpuSample(tuple(devices), processes, time.monotonic())

    def _device_processes(self, handle: Any) -> dict[int, int]:
        """pid -> bytes on one device, from the compute and graphics lists.

        A process with both kinds of context appears in both lists with the
        same figure, so the lists are merged with ``max``, not summed. Within a
        list a pid can repeat (one entry per MIG instance); those are summed.
        """
        merged: dict[int, int] = {}
        for query in ("ComputeRunningProcesses", "GraphicsRunningProcesses"):
            per_pid: dict[int, int] = {}
            for proc in self._list_processes(query, handle):
                used = proc.usedGpuMemory
                per_pid[int(proc.pid)] = per_pid.get(int(proc.pid), 0) + (
                    int(used) if used is not None else 0
                )
            for pid, used in per_pid.items():
                merged[pid] = max(merged.get(pid, 0), used)
        return merged

    def _list_processes(self, query: str, handle: Any) -> list[Any]:
        nvml = self._nvml
        try:
            return list(getattr(nvml, f"nvmlDeviceGet{query}")(handle))
        except nvml.NVMLError_NotSupported:
            return []  # e.g. no graphics contexts on a headless datacenter part
        except getattr(nvml, "NVMLLibraryMismatchError", ()):
            # The unversioned call targets a newer driver than the one installed.
            return list(getattr(nvml, f"nvmlDeviceGet{query}_v2")(handle))

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            logger.debug("nvmlShutdown failed: %s", exc)


# -- the fake -------------------------------------------------------------------


class FakeNvmlBackend:
    """Reads the figures from a JSON file, afresh at every sample.

    The file looks like::

        {"devices": [{"index": 0, "name": "Fake GPU", "total_mib": 16384}],
         "processes": {"12345": {"0": 3072}}}

    in MiB. ``name`` defaults to ``"Fake GPU"``; a device may also carry
    ``reserved_mib``, memory in use by something that is not a listed process
    (another tenant, the driver). A device's used memory is ``reserved_mib``
    plus the memory of the listed processes that are still running: a pid that
    has exited (or is a zombie) is left out of the sample, as NVML forgets a
    process when it dies. So a fake app can announce its usage and the figures
    stay right after it is killed, without anyone cleaning up the file.

    Writers must replace the file atomically (write a temporary file, then
    ``os.replace``); a reader then sees either the old or the new figures.
    """

    name = "fake-nvml"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def sample(self) -> GpuSample:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise GpuBackendError(f"cannot read fake NVML file {self.path}: {exc}") from exc
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise GpuBackendError(f"fake NVML file {self.path} is not valid JSON: {exc}") from exc
        try:
            return _parse_fake(document)
        except (TypeError, ValueError, KeyError) as exc:
            raise GpuBackendError(f"fake NVML file {self.path} is malformed: {exc}") from exc

    def close(self) -> None:
        pass


def _parse_fake(document: Any) -> GpuSample:
    if not isinstance(document, dict):
        raise TypeError("top level must be an object")
    raw_devices = document.get("devices")
    if not isinstance(raw_devices, list):
        raise TypeError('"devices" must be a list')
    totals: dict[int, tuple[str, int, int]] = {}
    for raw in raw_devices:
        if not isinstance(raw, dict):
            raise TypeError("each device must be an object")
        index = _int(raw["index"], "device index")
        if index in totals:
            raise ValueError(f"device index {index} appears twice")
        name = raw.get("name", "Fake GPU")
        if not isinstance(name, str):
            raise TypeError(f"device {index}: name must be a string")
        total = _mib(raw["total_mib"], f"device {index} total_mib")
        reserved = _mib(raw.get("reserved_mib", 0), f"device {index} reserved_mib")
        totals[index] = (name, total, reserved)

    raw_processes = document.get("processes", {})
    if not isinstance(raw_processes, dict):
        raise TypeError('"processes" must be an object')
    processes: dict[int, dict[int, int]] = {}
    for raw_pid, raw_usage in raw_processes.items():
        pid = _int_key(raw_pid, "pid")
        if not isinstance(raw_usage, dict):
            raise TypeError(f"process {pid}: usage must be an object")
        usage: dict[int, int] = {}
        for raw_index, mib in raw_usage.items():
            index = _int_key(raw_index, f"process {pid} device index")
            if index not in totals:
                raise ValueError(f"process {pid} uses unknown device {index}")
            usage[index] = _mib(mib, f"process {pid} memory on device {index}")
        if usage and _is_running(pid):
            processes[pid] = usage

    devices = []
    for index, (name, total, reserved) in sorted(totals.items()):
        used = reserved + sum(usage.get(index, 0) for usage in processes.values())
        devices.append(DeviceMemory(index, name, total, used, max(0, total - used)))
    return GpuSample(tuple(devices), processes, time.monotonic())


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _int_key(value: str, what: str) -> int:
    try:
        return _int(int(value), what)
    except ValueError:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}") from None


def _mib(value: Any, what: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < math.inf  # also refuses NaN
    ):
        raise ValueError(f"{what} must be a non-negative number of MiB, got {value!r}")
    return int(value * MIB)


def _is_running(pid: int) -> bool:
    if not psutil.pid_exists(pid):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


# -- choosing one ----------------------------------------------------------------


def open_backend(environ: Mapping[str, str] = os.environ) -> GpuBackend | None:
    """The backend to use here, or ``None`` when there is no GPU to watch.

    ``SUPERVISOR_FAKE_NVML=<path>`` selects ``FakeNvmlBackend`` (the file need
    not exist yet; sampling fails until it does). Otherwise NVML is tried; a
    missing driver, any NVML error or zero devices mean ``None``, never an
    exception, so a CPU-only machine runs the supervisor without GPU features.
    """
    fake = environ.get(FAKE_NVML_ENV)
    if fake:
        logger.info("using fake NVML figures from %s", fake)
        return FakeNvmlBackend(fake)
    if not _driver_loads():
        logger.info("NVML unavailable, GPU monitoring disabled: %s not found", NVML_LIBRARY)
        return None
    import pynvml

    try:
        backend = NvmlBackend(pynvml)
    except (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError, OSError) as exc:
        logger.info("NVML unavailable, GPU monitoring disabled: %s", exc)
        return None
    if backend.device_count == 0:
        logger.info("NVML reports no GPUs, GPU monitoring disabled")
        backend.close()
        return None
    logger.debug("NVML backend with %d device(s)", backend.device_count)
    return backend


def _driver_loads() -> bool:
    """Whether NVML's library loads here. Only then is ``pynvml`` imported: its
    thousands of ctypes definitions take about 7 ms, which a CPU-only host's start
    (``serve``'s first request waits for it) need not pay."""
    if not sys.platform.startswith("linux"):
        return True  # pynvml knows where the library lives elsewhere
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True
