"""``python -m supervisor run`` and ``schema``: stdout holds only JSON, exit codes say why."""

from __future__ import annotations

import json

import pytest
from http_helpers import APPS, EXAMPLES, cli

from supervisor.cli import ExitCode


def test_run_prints_only_the_output_json() -> None:
    result = cli("run", str(EXAMPLES / "hello"))  # input.json: {"name": "World"}
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stdout.count("\n") == 1
    assert json.loads(result.stdout)["greeting"] == "Hello, World!"


def test_app_prints_go_to_stderr() -> None:
    result = cli("run", str(APPS / "http_faults"), "--input", '{"text": "noise"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"] == "noise"
    assert "echo to stdout: noise" in result.stderr
    assert "echo to stderr: noise" in result.stderr


def test_run_with_function_input_and_setup(tmp_path: pytest.TempPathFactory) -> None:
    hello = str(EXAMPLES / "hello")
    greeted = cli("run", hello, "--input", '{"name": "Ada"}', "--setup", '{"greeting": "Hi"}')
    assert json.loads(greeted.stdout)["greeting"] == "Hi, Ada!"
    counted = cli("run", hello, "--function", "count", "--input", '{"n": 3}')
    assert json.loads(counted.stdout)["n"] == 3
    input_file = tmp_path / "input.json"  # type: ignore[operator]
    input_file.write_text('{"text": "abc"}')
    reversed_ = cli("run", hello, "--function", "reverse", "--input", f"@{input_file}")
    assert json.loads(reversed_.stdout)["text"] == "cba"
    from_stdin = cli("run", hello, "--input", "@-", input='{"name": "Stdin"}')
    assert json.loads(from_stdin.stdout)["greeting"] == "Hello, Stdin!"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["run", "no/such/dir"], ExitCode.USAGE),
        (["run", str(EXAMPLES / "hello"), "--input", "{bad"], ExitCode.USAGE),
        (["run", str(EXAMPLES / "hello"), "--input", "[1]"], ExitCode.USAGE),
        (["run", str(EXAMPLES / "hello"), "--input", "@/no/such/file"], ExitCode.USAGE),
        (["run", str(EXAMPLES / "hello"), "--bogus"], ExitCode.USAGE),
        (["run", str(EXAMPLES / "hello"), "--input", "{}"], ExitCode.BAD_INPUT),
        (["run", str(EXAMPLES / "hello"), "--function", "nope"], ExitCode.BAD_INPUT),
        (["run", str(APPS / "http_needs_setup"), "--input", '{"text": "a"}'], ExitCode.BAD_INPUT),
        (["run", str(APPS / "http_faults"), "--function", "boom"], ExitCode.APP_ERROR),
        (["run", str(APPS / "broken_import")], ExitCode.APP_ERROR),
        (["run", str(APPS / "http_faults"), "--function", "crash"], ExitCode.RUNTIME),
        (
            [
                "run",
                str(APPS / "http_faults"),
                "--function",
                "sleep",
                "--input",
                '{"seconds": 10}',
                "--run-timeout",
                "0.3",
            ],
            ExitCode.RUNTIME,
        ),
    ],
    ids=[
        "no-dir",
        "bad-json",
        "not-object",
        "no-file",
        "bad-option",
        "validation",
        "unknown-function",
        "setup-validation",
        "app-exception",
        "load-failed",
        "crash",
        "timeout",
    ],
)
def test_run_exit_codes(args: list[str], code: ExitCode) -> None:
    result = cli(*args)
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert result.stderr


def test_run_error_report_names_the_type() -> None:
    result = cli("run", str(APPS / "http_faults"), "--function", "boom", "--input", '{"text": "x"}')
    assert "error (app_exception): boom: x" in result.stderr
    assert "RuntimeError" in result.stderr


def test_schema_describes_every_function() -> None:
    result = cli("schema", str(EXAMPLES / "hello"))
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["name"] == "hello"
    assert set(schema["functions"]) == {"run", "reverse", "count"}
    count = schema["functions"]["count"]
    assert set(count) == {"description", "input_schema", "output_schema", "streaming"}
    assert count["streaming"] is True
    assert schema["functions"]["run"]["streaming"] is False
    assert schema["functions"]["run"]["input_schema"]["required"] == ["name"]
    assert schema["setup_schema"]["properties"]["greeting"]["default"] == "Hello"


def test_schema_needs_no_setup_values() -> None:
    result = cli("schema", str(APPS / "http_needs_setup"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["setup_schema"]["required"] == ["secret"]


def test_schema_failures() -> None:
    assert cli("schema", str(APPS / "broken_import")).returncode == ExitCode.APP_ERROR
    assert cli("schema", "no/such/dir").returncode == ExitCode.USAGE
    not_an_app = cli("schema", str(APPS))
    assert not_an_app.returncode == ExitCode.APP_ERROR
    assert not_an_app.stdout == ""


@pytest.mark.parametrize("command", [[], ["serve"], ["run"], ["schema"]])
def test_help(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout
    assert "exit codes" in result.stdout.replace("\n", " ")


def test_json_logs_are_one_object_per_line() -> None:
    result = cli("run", str(EXAMPLES / "hello"), "--log-format", "json", "--log-level", "info")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert records
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"].startswith("supervisor") for r in records)
