"""child_environment: an allowlist of host variables, the app's env, the runtime's pins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.environments.environment import PARENT_PID, child_environment

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])

HOST = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/me",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "NVIDIA_DRIVER_CAPABILITIES": "compute",
    "NCCL_DEBUG": "INFO",
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "HF_HOME": "/cache/hf",
    "AWS_SECRET_ACCESS_KEY": "hunter2",
    "DATABASE_URL": "postgres://secret",
    "MY_SECRET": "x",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
}


def test_allowlist_passes_runtime_variables_and_drops_secrets() -> None:
    env = child_environment({}, cuda_visible_devices="", host=HOST)
    for key in (
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "NVIDIA_DRIVER_CAPABILITIES",
        "NCCL_DEBUG",
        "CUDA_DEVICE_ORDER",
        "HF_HOME",
    ):
        assert env[key] == HOST[key], key
    for key in ("AWS_SECRET_ACCESS_KEY", "DATABASE_URL", "MY_SECRET"):
        assert key not in env, key


def test_app_env_is_added_and_overrides_host() -> None:
    env = child_environment(
        {"FOO": "bar", "HF_HOME": "/app/cache", "MY_SECRET": "from-app"},
        cuda_visible_devices="",
        host=HOST,
    )
    assert env["FOO"] == "bar"
    assert env["HF_HOME"] == "/app/cache"
    # An app may set a variable that happens to share a host secret's name: its own value.
    assert env["MY_SECRET"] == "from-app"


@pytest.mark.parametrize("devices", ["", "1", "0,2"])
def test_cuda_visible_devices_is_pinned(devices: str) -> None:
    env = child_environment({}, cuda_visible_devices=devices, host=HOST)
    assert env["CUDA_VISIBLE_DEVICES"] == devices


def test_cuda_visible_devices_cannot_be_overridden_by_app_env() -> None:
    env = child_environment(
        {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, cuda_visible_devices="3", host=HOST
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "3"


def test_cpu_only_child_sees_empty_cuda_visible_devices() -> None:
    env = child_environment({}, cuda_visible_devices="", host={"CUDA_VISIBLE_DEVICES": "0"})
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_parent_pid_is_ours_and_not_overridable() -> None:
    env = child_environment({PARENT_PID: "1"}, cuda_visible_devices="", host=HOST)
    assert env[PARENT_PID] == str(os.getpid())


def test_runtime_is_importable_and_unbuffered() -> None:
    env = child_environment({}, cuda_visible_devices="", host={"PYTHONPATH": "/extra"})
    assert env["PYTHONPATH"].split(os.pathsep) == [PROJECT_ROOT, "/extra"]
    assert env["PYTHONUNBUFFERED"] == "1"
    env = child_environment({"PYTHONPATH": "/app/lib"}, cuda_visible_devices="", host={})
    assert env["PYTHONPATH"].split(os.pathsep) == [PROJECT_ROOT, "/app/lib"]
    assert child_environment({}, cuda_visible_devices="", host={})["PYTHONPATH"] == PROJECT_ROOT


def test_defaults_to_the_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SECRET", "x")
    monkeypatch.setenv("HF_HOME", "/somewhere")
    env = child_environment({}, cuda_visible_devices="")
    assert "MY_SECRET" not in env
    assert env["HF_HOME"] == "/somewhere"


def test_does_not_mutate_its_inputs() -> None:
    host = dict(HOST)
    app_env = {"FOO": "bar"}
    child_environment(app_env, cuda_visible_devices="1", host=host)
    assert host == HOST
    assert app_env == {"FOO": "bar"}
