"""What ``run`` and ``serve`` show of an app: its setup output, progress, its own frames."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from http_helpers import APPS, REPO, Server, cli

TALKS = str(APPS / "setup_talks")


def test_run_shows_import_and_setup_output_by_default() -> None:
    result = cli("run", TALKS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": ""}
    lines = result.stderr.splitlines()
    assert "setup_talks | [stdout] importing setup_talks" in lines
    assert "setup_talks | [stdout] loading weights" in lines
    assert "setup_talks | [stderr] a logged line from setup" in lines
    assert "setup_talks | setup progress 50% shard 2/4" in lines
    assert "setup_talks | setup progress 100% shard 4/4" in lines


def test_json_logs_name_the_app_and_carry_the_progress() -> None:
    result = cli("run", TALKS, "--log-format", "json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    progress = [r for r in records if "progress" in r]
    assert [r["progress"]["fraction"] for r in progress] == [0.25, 0.5, 0.75, 1.0]
    assert all(r["app"] == "setup_talks" for r in progress)
    assert progress[1]["progress"]["phase"] == "setup"
    assert any(r["message"] == "[stdout] loading weights" for r in records)


def test_serve_logs_the_setup_output(tmp_path: Path) -> None:
    server = Server([TALKS], log=tmp_path / "server.log")
    try:
        server.wait_ready()
        logs = server.logs()
    finally:
        server.stop()
    assert "setup_talks | [stdout] loading weights" in logs
    assert "setup_talks | setup progress 75% shard 3/4" in logs


def run_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """``python -m supervisor ARGS`` with stderr on a pseudo-terminal: (code, stdout, tty)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "supervisor", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    stdout, _ = process.communicate(timeout=60)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    return process.returncode, stdout.decode(), seen.decode("utf-8", "replace")


def test_progress_is_a_bar_on_a_terminal() -> None:
    code, stdout, text = run_on_a_terminal("run", TALKS)
    assert code == 0, text
    assert json.loads(stdout) == {"text": ""}
    assert "setup_talks setup: 100%|" in text
    assert "\u2588" in text  # a filled block of the bar
    assert "setup progress 50%" not in text  # a bar, not a line per report
    assert "setup_talks | [stdout] loading weights" in text


def test_a_long_start_shows_its_phase_on_a_terminal() -> None:
    slow = str(APPS / "sup_slow_setup")
    code, stdout, text = run_on_a_terminal("run", slow, "--setup", '{"seconds": 2}')
    assert code == 0, text
    assert json.loads(stdout) == {"text": ""}
    assert "sup_slow_setup: setting_up" in text
    # Not on a pipe: there the output stays plain lines.
    piped = cli("run", slow, "--setup", '{"seconds": 2}')
    assert "setting_up" not in piped.stderr


def test_an_import_error_shows_the_apps_frames_only() -> None:
    result = cli("run", str(APPS / "broken_import"))
    assert result.returncode == 4
    assert 'broken_import/inference.py", line 3, in <module>' in result.stderr
    assert "ImportError: broken_import: this app cannot be imported" in result.stderr
    assert "app_loader.py" not in result.stderr
    assert "importlib" not in result.stderr
    assert "runtime frames hidden; --debug shows them" in result.stderr
    debug = cli("run", str(APPS / "broken_import"), "--debug")
    assert "app_loader.py" in debug.stderr
    assert "importlib" in debug.stderr
