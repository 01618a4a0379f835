"""The pure parts of per-app environments: kernels, keys, failures, the child's path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import filelock
import pytest

from supervisor import errors
from supervisor.environments.app_config import read_manifest
from supervisor.environments.app_interpreter import plan_environment
from supervisor.environments.env_cache import MARKER, RUNTIME_DIR, EnvCache, runtime_path
from supervisor.environments.env_spec import (
    RUNTIME_REQUIREMENTS,
    EnvSpec,
    env_spec,
    failing_requirement,
    requirement_lines,
    requirements_file,
)
from supervisor.environments.environment import child_environment
from supervisor.environments.interpreters import (
    Interpreter,
    find_interpreter,
    host_interpreter,
    requested_version,
)

PY311 = Interpreter("/usr/bin/python3.11", "3.11.7")


@pytest.mark.parametrize(
    ("kernel", "version"),
    [
        ("python-3.11", "3.11"),
        ("python-3.10", "3.10"),
        ("python3.12", "3.12"),
        ("3.12", "3.12"),
        ("3.10", "3.10"),
        (" Python-3.9.18 ", "3.9"),
        ("", None),
        (None, None),
        ("node-22", None),
    ],
)
def test_kernel_names_a_python_version(kernel: str | None, version: str | None) -> None:
    assert requested_version(kernel) == version


def test_an_unreadable_python_kernel_is_an_error() -> None:
    with pytest.raises(ValueError, match="python-latest"):
        requested_version("python-latest")


def test_the_host_interpreter_is_found_for_its_own_version() -> None:
    host = host_interpreter()
    assert find_interpreter(host.minor) == host
    assert find_interpreter("3.1") is None


def test_the_lock_wins_over_the_requirements(tmp_path: Path) -> None:
    assert requirements_file(tmp_path) is None
    assert env_spec(tmp_path, PY311) is None
    (tmp_path / "requirements.txt").write_text("six\n")
    assert requirements_file(tmp_path) == tmp_path / "requirements.txt"
    (tmp_path / "requirements.lock").write_text("six==1.17.0\n")
    spec = env_spec(tmp_path, PY311)
    assert spec is not None and spec.requirements.name == "requirements.lock"


def test_the_key_depends_on_what_is_installed_not_how_it_is_written() -> None:
    base = EnvSpec(Path("a/requirements.lock"), "six==1.17.0\npydantic==2.13.4\n", PY311)
    same = EnvSpec(
        Path("b/requirements.txt"), "# pins\nsix==1.17.0   # via x\n\npydantic==2.13.4", PY311
    )
    assert base.key == same.key
    assert base.key.startswith("py3.11-")
    other_pin = EnvSpec(base.requirements, "six==1.16.0\npydantic==2.13.4\n", PY311)
    other_python = EnvSpec(
        base.requirements, base.content, Interpreter("/usr/bin/python3.11", "3.11.9")
    )
    assert len({base.key, other_pin.key, other_python.key}) == 3


def test_requirement_lines_skip_options_and_comments() -> None:
    text = "--index-url https://x\n# c\nsix==1.17.0 # via y\n-r other.txt\nPillow>=10\n"
    assert requirement_lines(text) == ["six==1.17.0", "Pillow>=10"]


UV_NOT_FOUND = """\
Using Python 3.11.7 environment at: /envs/x
  \u00d7 No solution found when resolving dependencies:
  \u2570\u2500\u25b6 Because appvisor-missing was not found in the package registry and you
      require appvisor-missing==1.0, we can conclude that your requirements are
      unsatisfiable.
"""
UV_CONFLICT = """\
  \u00d7 No solution found when resolving dependencies:
  \u2570\u2500\u25b6 Because you require pydantic==1.10.0 and pydantic>=2.6, we can conclude
      that your requirements are unsatisfiable.
"""
PIP_NOT_FOUND = """\
Collecting six==1.17.0 (from -r requirements.txt (line 1))
Collecting Some_Pkg==9.9 (from -r requirements.txt (line 2))
ERROR: Could not find a version that satisfies the requirement some-pkg==9.9
ERROR: No matching distribution found for some-pkg==9.9
"""


@pytest.mark.parametrize(
    ("output", "requirements", "expected"),
    [
        (UV_NOT_FOUND, "six==1.17.0\nappvisor_missing==1.0\n", "appvisor_missing==1.0"),
        (UV_CONFLICT, "six\npydantic==1.10.0\n", "pydantic==1.10.0"),
        (PIP_NOT_FOUND, "six==1.17.0\nSome_Pkg==9.9\n", "Some_Pkg==9.9"),
        ("error: something else broke\n", "six==1.17.0\n", None),
    ],
)
def test_the_failing_requirement_is_read_from_the_installer_output(
    output: str, requirements: str, expected: str | None
) -> None:
    assert failing_requirement(output, requirements) == expected


def test_runtime_requirements_cover_what_the_runtime_imports() -> None:
    names = {r.split(">")[0].lower() for r in RUNTIME_REQUIREMENTS}
    assert names == {"pydantic", "msgpack", "anyio", "pyyaml"}


def test_an_app_environment_gets_only_the_runtime_on_its_path(tmp_path: Path) -> None:
    env = tmp_path / "py3.11-abc"
    (env / "bin").mkdir(parents=True)
    (env / RUNTIME_DIR).mkdir()
    python = str(env / "bin" / "python")
    assert runtime_path(python) is None  # not complete yet: not one of ours
    (env / MARKER).write_text("{}")
    host = {"PATH": "/usr/bin", "PYTHONPATH": "/host/site-packages"}
    child = child_environment(
        {"PYTHONPATH": "/app/lib"}, cuda_visible_devices="", host=host, python=python
    )
    assert child["PYTHONPATH"] == os.pathsep.join([str(env / RUNTIME_DIR), "/app/lib"])
    assert child["VIRTUAL_ENV"] == str(env)
    assert child["PATH"].split(os.pathsep)[0] == str(env / "bin")
    # The supervisor's own interpreter keeps the project root, as before.
    own = child_environment({}, cuda_visible_devices="", host=host, python=sys.executable)
    assert own["PYTHONPATH"].endswith("/host/site-packages")
    assert RUNTIME_DIR not in own["PYTHONPATH"]


def test_pip_index_settings_reach_uv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "/wheels")
    monkeypatch.setenv("UV_FIND_LINKS", "/uv-wheels")
    monkeypatch.setenv("VIRTUAL_ENV", "/some/venv")
    env = EnvCache(tmp_path, installer="uv")._installer_env()
    assert env["UV_INDEX_URL"] == "https://mirror.example/simple"
    assert env["UV_FIND_LINKS"] == "/uv-wheels"  # uv's own setting wins
    assert "VIRTUAL_ENV" not in env
    assert "UV_INDEX_URL" not in EnvCache(tmp_path, installer="pip")._installer_env()


def test_prune_removes_old_and_unfinished_environments_only(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    for key in ("py3.11-used", "py3.11-old", "py3.11-broken", "py3.11-building"):
        (tmp_path / key).mkdir()
    for key in ("py3.11-used", "py3.11-old", "py3.11-building"):
        (tmp_path / key / MARKER).write_text('{"python_version": "3.11.7"}')
    os.utime(tmp_path / "py3.11-old" / MARKER, (1, 1))
    with filelock.FileLock(str(tmp_path / "py3.11-building.lock")):
        os.utime(tmp_path / "py3.11-building" / MARKER, (1, 1))
        removed = {r.key for r in cache.prune(older_than=3600)}
    assert removed == {"py3.11-old", "py3.11-broken"}
    assert {r.key for r in cache.records()} == {"py3.11-used", "py3.11-building"}
    assert {r.key for r in cache.prune()} == {"py3.11-used", "py3.11-building"}


def _app(tmp_path: Path, kernel: str | None, requirements: str | None = None) -> Path:
    (tmp_path / "inf.yml").write_text(f"name: k\nkernel: {kernel}\n" if kernel else "name: k\n")
    if requirements is not None:
        (tmp_path / "requirements.txt").write_text(requirements)
    return tmp_path


def test_without_requirements_the_kernel_only_warns(tmp_path: Path) -> None:
    host = host_interpreter()
    for kernel in (None, f"python-{host.minor}"):
        app = _app(tmp_path, kernel)
        assert plan_environment(app, read_manifest(app), allow_host_python=False) == (None, [])
    app = _app(tmp_path, "python-3.4")  # not installed: still the fast path
    spec, warnings = plan_environment(app, read_manifest(app), allow_host_python=False)
    assert spec is None
    assert len(warnings) == 1 and "no requirements file" in warnings[0]


def test_with_requirements_a_missing_python_fails_unless_the_host_may_stand_in(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path, "python-3.4", requirements="six\n")
    with pytest.raises(errors.InterpreterMissingError, match=r"Python 3\.4"):
        plan_environment(app, read_manifest(app), allow_host_python=False)
    spec, warnings = plan_environment(app, read_manifest(app), allow_host_python=True)
    assert spec is not None and spec.python == host_interpreter()
    assert len(warnings) == 1 and "not installed" in warnings[0]


def test_an_unreadable_kernel_is_load_failed(tmp_path: Path) -> None:
    app = _app(tmp_path, "python-latest", requirements="six\n")
    with pytest.raises(errors.LoadFailedError, match="python-latest"):
        plan_environment(app, read_manifest(app), allow_host_python=True)
