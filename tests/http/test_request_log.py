"""Each failed request is logged once by the server: id, app, function, error, duration."""

from __future__ import annotations

import json
import time

from http_helpers import Server

FAULTS = "/apps/http_faults"


def _lines_with(server: Server, text: str, want: int = 1) -> list[str]:
    """The server's log lines holding ``text`` (waiting up to 30 s for ``want`` of them)."""
    deadline = time.monotonic() + 30
    while True:
        lines = [line for line in server.log_path.read_text().splitlines() if text in line]
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_an_app_exception_is_logged_once_as_json(multi: Server) -> None:
    body = {"input": {"text": "bang"}, "request_id": "log-me-500"}
    response = multi.client.post(f"{FAULTS}/run/boom", json=body)
    assert response.status_code == 500
    lines = _lines_with(multi, "log-me-500")
    time.sleep(0.2)
    assert len(_lines_with(multi, "log-me-500")) == 1, lines
    record = json.loads(lines[0])
    assert record["level"] == "error"
    assert record["logger"] == "supervisor.requests"
    request = record["request"]
    assert request["request_id"] == "log-me-500"
    assert request["app"] == "http_faults"
    assert request["function"] == "boom"
    assert request["error_type"] == "app_exception"
    assert request["status"] == 500
    assert 0 < request["duration"] < 30


def test_a_streamed_timeout_is_logged_once(multi: Server) -> None:
    body = {"input": {"seconds": 10}, "timeout": 0.2, "stream": True, "request_id": "log-sse-1"}
    with multi.client.stream("POST", f"{FAULTS}/run/sleep", json=body) as response:
        response.read()
    lines = _lines_with(multi, "log-sse-1")
    time.sleep(0.2)
    assert len(_lines_with(multi, "log-sse-1")) == 1
    request = json.loads(lines[0])["request"]
    assert (request["error_type"], request["status"]) == ("timeout", 504)


def test_a_validation_error_is_logged_as_text(hello: Server) -> None:
    response = hello.client.post("/run", json={"input": {"name": 3}, "request_id": "log-422"})
    assert response.status_code == 422
    lines = _lines_with(hello, "log-422")
    assert len(lines) == 1
    assert (
        "WARNING supervisor.requests: request log-422 failed: app=hello function=run " in lines[0]
    )
    assert "error=validation status=422 duration=" in lines[0]


def test_a_success_is_not_logged(hello: Server) -> None:
    response = hello.client.post("/run", json={"input": {"name": "A"}, "request_id": "log-ok"})
    assert response.status_code == 200
    time.sleep(0.2)
    assert _lines_with(hello, "log-ok", want=0) == []
