"""Helpers for the HTTP and CLI tests: real ``python -m supervisor`` processes.

A ``Server`` gets a free loopback port, is ready once ``/health`` answers 200,
and is stopped with SIGTERM. ``cli`` runs one command to completion.
(A module of its own rather than ``conftest``, which other test directories
also have, so that test modules can import it by a unique name.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "tests" / "apps"
EXAMPLES = REPO / "examples"
TOKEN = "test-token-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """``python -m supervisor ARGS`` run to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kw,
    )


class Server:
    def __init__(
        self,
        args: Sequence[str],
        token: str | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.log_path = log or Path(os.devnull)
        env = {k: v for k, v in os.environ.items() if k != "SUPERVISOR_AUTH_TOKEN"} | (env or {})
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "serve", *args, "--port", str(self.port)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()[-5000:]
        return ""

    def stop(self, timeout: float = 20.0) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


@contextlib.contextmanager
def running(
    args: Sequence[str], token: str | None = None, log: Path | None = None
) -> Iterator[Server]:
    server = Server(args, token, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def sse_events(response: httpx.Response) -> list[tuple[str, Any]]:
    """The (event, data) pairs of a Server-Sent Events response, read to its end."""
    events: list[tuple[str, Any]] = []
    name, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                events.append((name, json.loads("\n".join(data))))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return events


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
