"""What an app declares and the machine lacks: packages.txt entries and GPUs.

Warnings in the log and in status by default; with ``strict``, the start fails
before any child exists. Nothing is installed.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from sup_helpers import make_supervisor

from supervisor import errors
from supervisor.environments.system_packages import (
    dpkg_installed,
    listed_packages,
    missing_packages,
)

APPS = Path(__file__).resolve().parent.parent / "apps"
ABSENT = "appvisor-absent-package-9d2c"


def make_app(tmp_path: Path, manifest: str, packages: str | None = None) -> Path:
    app = tmp_path / "app"
    shutil.copytree(APPS / "plain", app)
    (app / "inf.yml").write_text(manifest)
    if packages is not None:
        (app / "packages.txt").write_text(packages)
    return app


def test_packages_txt_is_read_without_comments(tmp_path: Path) -> None:
    assert listed_packages(tmp_path) == []
    (tmp_path / "packages.txt").write_text("ffmpeg  # video\n\n# none\nlibgl1 libglib2.0-0\n")
    assert listed_packages(tmp_path) == ["ffmpeg", "libgl1", "libglib2.0-0"]


def test_a_package_is_present_if_installed_or_a_command() -> None:
    def installed(names: list[str]) -> set[str]:
        return {"libfoo"} & set(names)

    # "sh" is no package named here, but a command on PATH.
    assert missing_packages(["libfoo", "sh", ABSENT, ABSENT], installed) == [ABSENT]
    assert missing_packages([], installed) == []


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg on this machine")
def test_dpkg_reports_installed_packages_only() -> None:
    assert dpkg_installed(["bash", ABSENT]) == {"bash"}


pytestmark_processes = pytest.mark.usefixtures("no_leftover_processes")


@pytest.mark.anyio
@pytestmark_processes
async def test_missing_packages_and_gpus_are_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = "name: needy\nresources:\n  gpu:\n    count: 1\n"
    app_dir = make_app(tmp_path, manifest, packages=f"bash\n{ABSENT}\n")
    caplog.set_level(logging.WARNING, "supervisor")
    async with make_supervisor(pool_size=0) as sup:  # no GPU backend: no GPUs
        app = await sup.start(app_dir)
        assert (await app.run({"text": "a"}))["text"] == "A"
        warnings = app.status()["warnings"]
    assert len(warnings) == 2
    assert ABSENT in warnings[0] and "bash" not in warnings[0]
    assert "declares 1 GPU(s)" in warnings[1]
    assert ABSENT in caplog.text and "declares 1 GPU(s)" in caplog.text


@pytest.mark.anyio
@pytestmark_processes
async def test_strict_makes_them_errors_before_any_child(tmp_path: Path) -> None:
    packages_app = make_app(tmp_path / "p", "name: pkgs\n", packages=f"{ABSENT}\n")
    gpu_app = make_app(tmp_path / "g", "name: gpu\nresources:\n  gpu:\n    count: 2\n")
    async with make_supervisor(pool_size=0, strict=True) as sup:
        with pytest.raises(errors.MissingSystemPackagesError) as caught:
            await sup.start(packages_app)
        assert caught.value.to_dict()["missing"] == [ABSENT]
        assert caught.value.type == "missing_system_packages"
        with pytest.raises(errors.AdmissionError, match=r"declares 2 GPU\(s\)"):
            await sup.start(gpu_app)
        assert sup.apps == {}
        # Explicitly running a GPU app on no GPUs is the caller's choice.
        app = await sup.start(gpu_app, gpus=0)
        assert app.status()["warnings"] == []
