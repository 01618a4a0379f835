"""read_manifest: what inf.yml declares, defaults, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.environments.app_config import AppConfigError, AppManifest, read_manifest

APPS = Path(__file__).resolve().parents[1] / "apps"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "inf.yml").write_text(text)
    return tmp_path


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    app_dir = tmp_path / "my_app"
    app_dir.mkdir()
    manifest = read_manifest(app_dir)
    assert manifest == AppManifest(name="my_app")
    assert manifest.gpu_count == 0
    assert manifest.vram is None
    assert manifest.ram is None
    assert dict(manifest.env) == {}


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert read_manifest(write(tmp_path, "")) == AppManifest(name=tmp_path.name)


def test_full_manifest(tmp_path: Path) -> None:
    manifest = read_manifest(
        write(
            tmp_path,
            """
name: my-model
env:
  FOO: bar
  NUM: 3
resources:
  gpu:
    count: 2
    vram: 8000000000
    type: nvidia
  ram: 16000000000
""",
        )
    )
    assert manifest.name == "my-model"
    assert dict(manifest.env) == {"FOO": "bar", "NUM": "3"}
    assert manifest.gpu_count == 2
    assert manifest.vram == 8_000_000_000
    assert isinstance(manifest.vram, int)
    assert manifest.ram == 16_000_000_000


def test_byte_fields_accept_floats_and_zero_means_unset(tmp_path: Path) -> None:
    manifest = read_manifest(
        write(tmp_path, "resources:\n  gpu:\n    count: 1\n    vram: 2500000000.0\n  ram: 0\n")
    )
    assert manifest.vram == 2_500_000_000
    assert isinstance(manifest.vram, int)
    assert manifest.ram is None


@pytest.mark.parametrize("gpu_type", ["none", "None", "NONE", "apple"])
def test_device_type_none_means_no_device_whatever_the_count(tmp_path: Path, gpu_type: str) -> None:
    manifest = read_manifest(
        write(tmp_path, f"resources:\n  gpu:\n    count: 4\n    type: {gpu_type}\n")
    )
    assert manifest.gpu_count == 0


def test_multi_test_app_manifest() -> None:
    manifest = read_manifest(APPS / "multi")
    assert manifest.name == "multi"
    assert manifest.gpu_count == 0
    assert manifest.vram is None
    assert manifest.ram == 1_000_000_000


def test_name_defaults_to_directory(tmp_path: Path) -> None:
    assert read_manifest(write(tmp_path, "resources: {}\n")).name == tmp_path.name


def test_malformed_yaml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path, "name: [unclosed\nresources: {\n")
    with pytest.raises(AppConfigError) as info:
        read_manifest(tmp_path)
    assert str(tmp_path / "inf.yml") in str(info.value)
    assert "YAML" in str(info.value)


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("- a\n- b\n", "top level"),
        ("resources: 3\n", "resources"),
        ("resources:\n  gpu: [1]\n", "resources.gpu"),
        ("env: [A, B]\n", "env"),
        ("resources:\n  gpu:\n    count: -1\n", "resources.gpu.count"),
        ("resources:\n  gpu:\n    count: two\n", "resources.gpu.count"),
        ("resources:\n  gpu:\n    count: true\n", "resources.gpu.count"),
        ("resources:\n  gpu:\n    vram: lots\n", "resources.gpu.vram"),
        ("resources:\n  ram: -5\n", "resources.ram"),
    ],
    ids=[
        "top-level-list",
        "resources-scalar",
        "device-section-list",
        "env-list",
        "count-negative",
        "count-text",
        "count-bool",
        "vram-text",
        "ram-negative",
    ],
)
def test_bad_values_are_errors_naming_the_key(tmp_path: Path, text: str, what: str) -> None:
    write(tmp_path, text)
    with pytest.raises(AppConfigError) as info:
        read_manifest(tmp_path)
    assert what in str(info.value)
    assert str(tmp_path / "inf.yml") in str(info.value)


@pytest.mark.parametrize(
    ("line", "kernel"),
    [
        ("kernel: python-3.11", "python-3.11"),
        ('kernel: "3.10"', "3.10"),
        ("kernel: 3.10", "3.10"),  # YAML's 3.1
        ("kernel: 3.12", "3.12"),
        ("kernel:", None),
        ('kernel: ""', None),
        ("name: x", None),
    ],
)
def test_kernel_is_read_as_written(tmp_path: Path, line: str, kernel: str | None) -> None:
    assert read_manifest(write(tmp_path, line + "\n")).kernel == kernel
