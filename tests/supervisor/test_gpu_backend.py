from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pynvml
import pytest

from supervisor.gpu.backend import (
    FAKE_NVML_ENV,
    MIB,
    DeviceMemory,
    FakeNvmlBackend,
    GpuBackend,
    GpuBackendError,
    GpuSample,
    NvmlBackend,
    open_backend,
)


def write_fake(path: Path, document: Any) -> None:
    """Replace the file atomically, as apps and tests are told to."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(document if isinstance(document, str) else json.dumps(document))
    os.replace(tmp, path)


def exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not psutil.pid_exists(proc.pid)
    return proc.pid


# -- the fake -------------------------------------------------------------------


def test_fake_parses_devices_and_live_processes(tmp_path: Path) -> None:
    path = tmp_path / "nvml.json"
    me = os.getpid()
    write_fake(
        path,
        {
            "devices": [
                {"index": 0, "name": "Fake GPU", "total_mib": 16384},
                {"index": 1, "total_mib": 8192, "reserved_mib": 512},
            ],
            "processes": {str(me): {"0": 3072, "1": 1024}},
        },
    )
    backend: GpuBackend = FakeNvmlBackend(path)
    sample = backend.sample()
    assert sample.devices == (
        DeviceMemory(0, "Fake GPU", 16384 * MIB, 3072 * MIB, (16384 - 3072) * MIB),
        DeviceMemory(1, "Fake GPU", 8192 * MIB, 1536 * MIB, (8192 - 1536) * MIB),
    )
    assert sample.processes == {me: {0: 3072 * MIB, 1: 1024 * MIB}}
    assert sample.device(1) == sample.devices[1]
    assert sample.device(7) is None
    assert abs(sample.taken_at - time.monotonic()) < 60  # the monotonic clock, not the epoch
    backend.close()


def test_fake_ignores_exited_pids(tmp_path: Path) -> None:
    path = tmp_path / "nvml.json"
    dead = exited_pid()
    me = os.getpid()
    write_fake(
        path,
        {
            "devices": [{"index": 0, "total_mib": 1000}],
            "processes": {str(dead): {"0": 900}, str(me): {"0": 100}},
        },
    )
    sample = FakeNvmlBackend(path).sample()
    assert sample.processes == {me: {0: 100 * MIB}}
    assert sample.devices[0].used == 100 * MIB
    assert sample.devices[0].free == 900 * MIB


def test_fake_ignores_zombies(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        path = tmp_path / "nvml.json"
        write_fake(
            path,
            {"devices": [{"index": 0, "total_mib": 10}], "processes": {str(proc.pid): {"0": 5}}},
        )
        sample = FakeNvmlBackend(path).sample()
        assert sample.processes == {}
        assert sample.devices[0].used == 0
    finally:
        proc.wait()


def test_fake_free_never_negative(tmp_path: Path) -> None:
    path = tmp_path / "nvml.json"
    write_fake(
        path,
        {
            "devices": [{"index": 0, "total_mib": 100, "reserved_mib": 50}],
            "processes": {str(os.getpid()): {"0": 80.5}},
        },
    )
    device = FakeNvmlBackend(path).sample().devices[0]
    assert device.used == int(130.5 * MIB)
    assert device.free == 0


def test_fake_survives_concurrent_atomic_replacement(tmp_path: Path) -> None:
    path = tmp_path / "nvml.json"
    me = str(os.getpid())
    states = [
        {"devices": [{"index": 0, "total_mib": 1000}], "processes": {me: {"0": 100}}},
        {"devices": [{"index": 0, "total_mib": 1000}], "processes": {me: {"0": 700}}},
    ]
    write_fake(path, states[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            write_fake(path, states[i % 2])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    backend = FakeNvmlBackend(path)
    seen = set()
    try:
        for _ in range(300):
            seen.add(backend.sample().devices[0].used // MIB)
    finally:
        stop.set()
        thread.join()
    assert seen <= {100, 700}
    assert seen  # and, almost always, both


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[]", "top level must be an object"),
        ({"processes": {}}, '"devices" must be a list'),
        ({"devices": [{"name": "x", "total_mib": 1}]}, "index"),
        ({"devices": [{"index": 0}]}, "total_mib"),
        ({"devices": [{"index": 0, "total_mib": -1}]}, "total_mib"),
        ({"devices": [{"index": 0, "total_mib": "big"}]}, "total_mib"),
        ({"devices": [{"index": "0", "total_mib": 1}]}, "device index"),
        ({"devices": [{"index": 0, "total_mib": 1}, {"index": 0, "total_mib": 1}]}, "twice"),
        ({"devices": [{"index": 0, "total_mib": 1}], "processes": []}, '"processes"'),
        ({"devices": [{"index": 0, "total_mib": 1}], "processes": {"abc": {"0": 1}}}, "pid"),
        (
            {"devices": [{"index": 0, "total_mib": 1}], "processes": {"1": {"3": 1}}},
            "unknown device",
        ),
        ({"devices": [{"index": 0, "total_mib": 1}], "processes": {"1": {"0": None}}}, "MiB"),
        ({"devices": [{"index": 0, "total_mib": 1}], "processes": {"1": 5}}, "must be an object"),
    ],
)
def test_fake_malformed_file_raises(tmp_path: Path, content: Any, fragment: str) -> None:
    path = tmp_path / "nvml.json"
    write_fake(path, content)
    with pytest.raises(GpuBackendError, match="fake NVML file") as info:
        FakeNvmlBackend(path).sample()
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_fake_infinite_memory_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "nvml.json"
    write_fake(path, '{"devices": [{"index": 0, "total_mib": Infinity}]}')
    with pytest.raises(GpuBackendError, match="total_mib"):
        FakeNvmlBackend(path).sample()


def test_fake_missing_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(GpuBackendError, match="cannot read fake NVML file"):
        FakeNvmlBackend(path).sample()


# -- choosing a backend ----------------------------------------------------------


def test_open_backend_uses_fake_when_env_set(tmp_path: Path) -> None:
    path = tmp_path / "later.json"
    backend = open_backend({FAKE_NVML_ENV: str(path)})
    assert isinstance(backend, FakeNvmlBackend)
    assert backend.name == "fake-nvml"
    assert backend.path == path
    write_fake(path, {"devices": [{"index": 3, "total_mib": 1}]})
    assert [d.index for d in backend.sample().devices] == [3]


def nvml_loadable() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_open_backend_without_env_never_raises() -> None:
    backend = open_backend({})
    if nvml_loadable():
        # A GPU machine: the real backend, if it sees a device.
        assert backend is None or isinstance(backend, NvmlBackend)
        if backend is not None:
            assert backend.sample().devices
            backend.close()
    else:
        assert backend is None


def test_open_backend_none_when_library_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    monkeypatch.setattr("supervisor.gpu.backend._driver_loads", lambda: True)
    assert open_backend({}) is None
    assert open_backend({FAKE_NVML_ENV: ""}) is None


# -- NVML, through a stand-in for pynvml -----------------------------------------


class StubNvml:
    """Just enough of the pynvml module for NvmlBackend."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError

    def __init__(self, devices: list[dict[str, Any]]) -> None:
        self.devices = devices
        self.calls: list[str] = []
        self.fail_memory = False

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> str | bytes:
        name: str | bytes = handle["name"]
        return name

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> SimpleNamespace:
        if self.fail_memory:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return SimpleNamespace(total=handle["total"], used=handle["used"], free=handle["free"])

    def _procs(self, entries: Any) -> list[SimpleNamespace]:
        if isinstance(entries, BaseException):
            raise entries
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in entries]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict[str, Any]) -> list[Any]:
        return self._procs(handle.get("compute", []))

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: dict[str, Any]) -> list[Any]:
        return self._procs(handle.get("graphics", []))

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: dict[str, Any]) -> list[Any]:
        return self._procs(handle.get("graphics_v2", []))


def test_nvml_backend_samples_devices_and_processes() -> None:
    stub = StubNvml(
        [
            {
                "name": b"GPU Zero",
                "total": 100,
                "used": 60,
                "free": 40,
                "compute": [(10, 30), (11, None)],
                "graphics": [(10, 30), (12, 5)],
            },
            {
                "name": "GPU One",
                "total": 200,
                "used": 20,
                "free": 180,
                "compute": [(10, 7), (10, 3)],  # MIG: one entry per instance
                "graphics": pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED),
            },
        ]
    )
    backend = NvmlBackend(stub)
    assert backend.name == "nvml"
    assert backend.device_count == 2
    sample = backend.sample()
    assert sample.devices == (
        DeviceMemory(0, "GPU Zero", 100, 60, 40),
        DeviceMemory(1, "GPU One", 200, 20, 180),
    )
    assert sample.processes == {10: {0: 30, 1: 10}, 11: {0: 0}, 12: {0: 5}}
    backend.close()
    backend.close()
    assert stub.calls == ["init", "shutdown"]
    with pytest.raises(GpuBackendError, match="closed"):
        backend.sample()


def test_nvml_backend_falls_back_to_versioned_call_on_mismatch() -> None:
    stub = StubNvml(
        [
            {
                "name": "G",
                "total": 1,
                "used": 1,
                "free": 0,
                "graphics": pynvml.NVMLLibraryMismatchError("old driver"),
                "graphics_v2": [(5, 1)],
            }
        ]
    )
    assert NvmlBackend(stub).sample().processes == {5: {0: 1}}


def test_nvml_backend_wraps_errors() -> None:
    stub = StubNvml([{"name": "G", "total": 1, "used": 0, "free": 1}])
    backend = NvmlBackend(stub)
    stub.fail_memory = True
    with pytest.raises(GpuBackendError, match="NVML query failed") as info:
        backend.sample()
    assert isinstance(info.value.__cause__, pynvml.NVMLError)


def test_open_backend_none_when_no_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = StubNvml([])
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    monkeypatch.setattr("supervisor.gpu.backend._driver_loads", lambda: True)
    assert open_backend({}) is None
    assert stub.calls == ["init", "shutdown"]


def test_sample_is_frozen() -> None:
    sample = GpuSample((), {}, 0.0)
    with pytest.raises(AttributeError):
        sample.taken_at = 1.0  # type: ignore[misc]


def test_a_host_without_the_driver_library_never_imports_pynvml() -> None:
    """The library is looked for first: pynvml's import (about 7 ms) is on every
    start's path, and a CPU-only host has nothing to gain from it."""
    script = (
        "import sys\n"
        "from supervisor.gpu import backend\n"
        "backend.NVML_LIBRARY = 'libnvidia-ml-absent-for-this-test.so.1'\n"
        "print(backend.open_backend({}), 'pynvml' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["None", "False"], done.stderr
