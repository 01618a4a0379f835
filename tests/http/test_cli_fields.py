"""``run -i``, ``--version``, the ``--setup`` forms and the documented exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from http_helpers import EXAMPLES, cli

from supervisor.cli import ExitCode

HELLO = str(EXAMPLES / "hello")


def test_i_fields_are_typed_by_the_input_schema() -> None:
    greeted = cli("run", HELLO, "-i", "name=Ada")
    assert greeted.returncode == 0, greeted.stderr
    assert json.loads(greeted.stdout)["greeting"] == "Hello, Ada!"
    counted = cli("run", HELLO, "--function", "count", "-i", "n=3")
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["n"] == 3  # 3, not "3"
    assert "not in the input schema" not in counted.stderr  # input.json is run's, not count's


def test_i_at_path_uploads_a_file_field(tmp_path: Path) -> None:
    sample = EXAMPLES / "image" / "sample.png"
    fields = ["-i", f"image=@{sample}", "-i", "size=16"]
    # The thumbnail is kept in the test's temp dir, not in the checkout.
    result = cli("run", str(EXAMPLES / "image"), *fields, "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    image = json.loads(result.stdout)["image"]
    assert image["content_type"] == "image/png"


def test_a_value_of_the_wrong_type_is_bad_input() -> None:
    result = cli("run", HELLO, "--function", "count", "-i", "n=many")
    assert result.returncode == ExitCode.BAD_INPUT
    assert "valid integer" in result.stderr


def test_an_unknown_input_field_is_warned_about() -> None:
    result = cli("run", HELLO, "-i", "nmae=Ada")  # name comes from input.json
    assert result.returncode == 0, result.stderr
    assert "input field 'nmae' is not in the input schema of run (it takes: name)" in result.stderr


def test_malformed_i_and_setup_forms_are_usage_errors() -> None:
    bad_field = cli("run", HELLO, "-i", "name")
    assert bad_field.returncode == ExitCode.USAGE
    assert "expected NAME=VALUE" in bad_field.stderr
    run_setup = cli("run", HELLO, "--setup", "greeting=Hi")
    assert run_setup.returncode == ExitCode.USAGE
    assert '{"greeting": "Hi"}' in run_setup.stderr
    serve_setup = cli("serve", HELLO, "--setup", "greeting=Hi", "--port", "0")
    assert serve_setup.returncode == ExitCode.USAGE
    assert '{"greeting": "Hi"}' in serve_setup.stderr
    assert "served app (hello)" in serve_setup.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["run"], ["schema"]])
def test_version_everywhere(command: list[str]) -> None:
    result = cli(*command, "--version")
    assert result.returncode == 0, result.stderr
    assert "0.1.0 (protocol 1)" in result.stdout


def test_exit_codes_are_documented_once() -> None:
    help_text = cli("run", "--help").stdout.replace("\n", " ")
    for code in ExitCode:
        assert f" {int(code)} " in f" {help_text} ", code
