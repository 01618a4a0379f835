"""``run`` with an app's own environment: progress on stderr, clear failures,
``--no-app-env``, and ``env list|prune``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from http_helpers import REPO, cli

from supervisor.cli import ExitCode

sys.path.insert(0, str(REPO / "tests" / "supervisor"))
from env_apps import make_app

pytestmark = pytest.mark.timeout(600)  # a cold package cache downloads the runtime's wheels

LOCK = "six==1.17.0\nPyYAML==6.0.3\ntomli-w==1.2.0\n"


def test_run_builds_the_environment_with_progress_then_reuses_it(tmp_path: Path) -> None:
    app = str(make_app(tmp_path, "envy", lock=LOCK))
    cache = str(tmp_path / "envs")
    first = cli("run", app, "--env-cache", cache, timeout=300)
    assert first.returncode == ExitCode.OK, first.stderr
    assert json.loads(first.stdout)["versions"]["six"] == "1.17.0"
    assert "building py3." in first.stderr and "built py3." in first.stderr
    second = cli("run", app, "--env-cache", cache)
    assert second.returncode == ExitCode.OK, second.stderr
    assert "building" not in second.stderr
    listed = [
        json.loads(line) for line in cli("env", "list", "--env-cache", cache).stdout.splitlines()
    ]
    assert len(listed) == 1 and listed[0]["complete"] is True
    assert listed[0]["requirements"].endswith("requirements.lock")
    assert json.loads(first.stdout)["prefix"] == listed[0]["path"]
    host = cli("run", app, "--env-cache", cache, "--no-app-env")
    assert json.loads(host.stdout)["prefix"] == sys.prefix
    # schema imports the app in its environment too, where tomli_w is (the host's
    # test environment has six, through openapi-spec-validator, but not tomli_w).
    inference = Path(app) / "inference.py"
    inference.write_text("import tomli_w  # only in the environment\n" + inference.read_text())
    schema = cli("schema", app, "--env-cache", cache)
    assert schema.returncode == ExitCode.OK, schema.stderr
    assert "run" in json.loads(schema.stdout)["functions"]
    assert cli("schema", app, "--no-app-env").returncode == ExitCode.APP_ERROR
    pruned = cli("env", "prune", "--env-cache", cache)
    assert "1 environment(s) removed" in pruned.stderr
    assert cli("env", "list", "--env-cache", cache).stdout == ""


def test_a_failed_install_names_the_requirement_and_shows_the_installer(tmp_path: Path) -> None:
    app = str(make_app(tmp_path, "broken-env", requirements="appvisor-absent-5c1d==2.0\n"))
    result = cli("run", app, "--env-cache", str(tmp_path / "envs"), timeout=300)
    assert result.returncode == ExitCode.APP_ERROR
    assert "error (environment_failed)" in result.stderr
    assert "requirement:\nappvisor-absent-5c1d==2.0" in result.stderr
    assert "installer_output:" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_missing_interpreter_is_named(tmp_path: Path) -> None:
    app = str(make_app(tmp_path, "ancient", lock=LOCK, kernel="python-3.4"))
    result = cli("run", app, "--env-cache", str(tmp_path / "envs"))
    assert result.returncode == ExitCode.APP_ERROR
    assert "error (interpreter_missing)" in result.stderr
    assert "Python 3.4" in result.stderr and "--allow-host-python" in result.stderr
