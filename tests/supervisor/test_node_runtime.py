"""The pure decisions behind Node.js apps: which runtime an app directory asks
for, whether a node serves its ``kernel:``, and the cache key of its packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.environments.app_config import AppConfigError, choose_runtime, open_app_dir
from supervisor.environments.node_packages import package_key
from supervisor.environments.node_runtime import check_version, kernel_major, parse_version
from supervisor.errors import EnvironmentFailedError


@pytest.mark.parametrize(
    ("files", "kernel", "runtime"),
    [
        (["inference.py"], None, "python"),
        (["inference.js"], None, "node"),
        (["src/inference.js"], None, "node"),
        (["inference.py", "inference.js"], None, "python"),
        (["inference.py", "inference.js"], "node-22", "node"),
        (["inference.js"], "python-3.11", "node"),
    ],
)
def test_the_runtime_follows_the_entry_point_and_kernel(
    tmp_path: Path, files: list[str], kernel: str | None, runtime: str
) -> None:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert choose_runtime(tmp_path, kernel) == runtime


def test_an_app_dir_without_any_entry_point_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AppConfigError, match=r"no inference\.py, inference\.js"):
        choose_runtime(tmp_path, None)
    (tmp_path / "inference.py").write_text("")
    with pytest.raises(AppConfigError, match=r"needs inference\.js"):
        choose_runtime(tmp_path, "node-22")


def test_the_manifest_carries_kernel_and_runtime(tmp_path: Path) -> None:
    (tmp_path / "inference.js").write_text("")
    (tmp_path / "inf.yml").write_text("name: n\nkernel: node-22\n")
    _, manifest = open_app_dir(tmp_path)
    assert (manifest.kernel, manifest.runtime) == ("node-22", "node")


@pytest.mark.parametrize(
    ("text", "version"),
    [("v20.20.2\n", (20, 20, 2)), ("22.1.0", (22, 1, 0)), ("nope", None)],
)
def test_parse_version(text: str, version: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize(
    ("kernel", "major"),
    [("node-22", 22), ("Node22", 22), ("node-20.6", 20), ("python-3.11", None), (None, None)],
)
def test_kernel_major(kernel: str | None, major: int | None) -> None:
    assert kernel_major(kernel) == major


def test_a_node_older_than_the_kernel_is_refused_or_warned_about() -> None:
    assert check_version((22, 3, 0), "node-22", allow_older=False) is None
    assert check_version((20, 20, 2), None, allow_older=False) is None
    with pytest.raises(EnvironmentFailedError, match=r"asks for node-22 but node is 20\.20\.2"):
        check_version((20, 20, 2), "node-22", allow_older=False)
    warning = check_version((20, 20, 2), "node-22", allow_older=True)
    assert warning is not None and "running it anyway" in warning


def test_a_node_older_than_the_runtime_needs_is_refused_even_when_allowed() -> None:
    with pytest.raises(EnvironmentFailedError, match="too old for the child runtime"):
        check_version((16, 20, 0), None, allow_older=True)


def test_the_package_key_changes_with_each_input() -> None:
    base = package_key(b"{}", None, 22)
    assert base == package_key(b"{}", None, 22)
    assert len({base, package_key(b"{ }", None, 22), package_key(b"{}", b"", 22)}) == 3
    assert base != package_key(b"{}", None, 20)
