"""A hostile or careless client against ``serve`` (issue 14): whatever it sends,
its request fails alone with a structured 4xx, and the app keeps serving.

One server with small limits serves ``tests/apps/robust`` for the whole module.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import APPS, Server, running
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LIMITS = [
    "--max-body-size",
    "64K",
    "--max-upload-size",
    "256K",
    "--header-timeout",
    "1",
    "--body-timeout",
    "1",
    "--run-timeout",
    "1",
    "--setup",
    '{"greeting": "Hi"}',
]


@pytest.fixture(scope="module")
def robust(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("robust-server") / "server.log"
    with running([str(APPS / "robust"), *LIMITS], log=log) as server:
        yield server


def nested(levels: int) -> str:
    return "[" * levels + '"a"' + "]" * levels


def assert_still_serving(server: Server) -> None:
    response = server.client.post("/run", json={"input": {"text": "Ada"}})
    assert response.status_code == 200, response.text
    assert response.json()["output"]["text"] == "Hi, Ada"
    assert server.client.get("/health").status_code == 200


def post_raw(server: Server, body: bytes, **headers: str) -> httpx.Response:
    return server.client.post(
        "/run", content=body, headers={"Content-Type": "application/json", **headers}
    )


# -- nesting, sizes and bad values --------------------------------------------------


@pytest.mark.parametrize("where", ["input", "setup", "stream"])
def test_a_deeply_nested_body_fails_alone(robust: Server, where: str) -> None:
    deep = nested(500)
    body = {
        "input": f'{{"text": "a", "extra": {deep}}}',
        "setup": f'{{"text": "a"}}, "setup": {{"greeting": {deep}}}',
        "stream": f'{{"text": "a", "extra": {deep}}}, "stream": true',
    }[where]
    response = post_raw(robust, f'{{"input": {body}}}'.encode())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["errors"][0]["type"] == "limit.max_depth"
    assert_still_serving(robust)


def test_json_too_deep_for_the_parser_is_a_bad_request(robust: Server) -> None:
    response = post_raw(robust, f'{{"input": {{"extra": {nested(20_000)}}}}}'.encode())
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "bad_request"
    assert_still_serving(robust)


def test_an_invalid_setup_does_not_poison_the_app(robust: Server) -> None:
    bad = robust.client.post("/run", json={"input": {"text": "x"}, "setup": {"greeting": 5}})
    assert bad.status_code == 422, bad.text
    assert_still_serving(robust)
    reverse = robust.client.post("/run/nap", json={"input": {"seconds": 0}})
    assert reverse.status_code == 200


def test_a_clients_timeout_cannot_beat_the_operators(robust: Server) -> None:
    response = robust.client.post("/run/nap", json={"input": {"seconds": 20}, "timeout": 100_000})
    # The operator's 1 s: with the client's 100,000 s the 20 s nap would have answered 200.
    assert response.status_code == 504, response.text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"input": {}, "timeout": NaN}', 400),
        (b'{"input": {}, "timeout": Infinity}', 400),
        (b'{"input": {}, "timeout": 1e999}', 422),
        (b'{"input": {}, "timeout": -1}', 422),
        (b'{"input": {}, "request_id": "."}', 422),
        (b'{"input": {}, "request_id": ".."}', 422),
    ],
)
def test_bad_body_fields_are_refused(robust: Server, body: bytes, status: int) -> None:
    response = post_raw(robust, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] in ("bad_request", "validation")


def test_a_body_over_the_limit_is_413(robust: Server) -> None:
    big = json.dumps({"input": {"text": "x" * 100_000}}).encode()
    declared = post_raw(robust, big)
    assert declared.status_code == 413
    assert declared.json()["error"]["type"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the guard counts as it reads
        yield b'{"input": {"text": "'
        for _ in range(20):
            yield b"x" * 10_000
        yield b'"}}'

    chunked = robust.client.post(
        "/run", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    assert_still_serving(robust)


def test_uploads_over_the_limit_are_413(robust: Server, tmp_path: Path) -> None:
    files = {"image": ("big.bin", b"\0" * 300_000, "application/octet-stream")}
    upload = robust.client.post("/run", data={"request": '{"input": {}}'}, files=files)
    assert upload.status_code == 413, upload.text
    request_part = {"request": ("request.json", b'{"input": {"text": "' + b"x" * 70_000 + b'"}}')}
    as_file = robust.client.post("/run", files=request_part)
    assert as_file.status_code == 413, as_file.text
    assert_still_serving(robust)


# -- slow and idle clients -------------------------------------------------------------


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_a_client_slow_with_its_headers_is_disconnected(robust: Server) -> None:
    with socket.create_connection(("127.0.0.1", robust.port)) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\n")
        assert read_all(sock, timeout=15) == b""  # closed by the server, not by us
    assert_still_serving(robust)


def test_a_client_stalling_its_body_gets_408(robust: Server) -> None:
    with socket.create_connection(("127.0.0.1", robust.port)) as sock:
        sock.sendall(
            b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"input": '
        )
        answer = read_all(sock, timeout=15)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer
    assert_still_serving(robust)


# -- operators' controls -------------------------------------------------------------


def test_restart_gives_the_app_a_fresh_child(robust: Server) -> None:
    before = robust.client.get("/health").json()["apps"]["robust"]["pids"]
    response = robust.client.post("/restart")
    assert response.status_code == 200, response.text
    assert response.json()["restarted"] is True
    after = robust.client.get("/health").json()["apps"]["robust"]["pids"]
    assert after and after != before
    assert_still_serving(robust)


def test_a_request_cut_by_shutdown_gets_a_json_503(tmp_path: Path) -> None:
    server = Server([str(APPS / "robust"), "--shutdown-timeout", "1"], log=tmp_path / "server.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            import threading

            answer: dict[str, Any] = {}

            def call() -> None:
                answer["response"] = client.post("/run/nap", json={"input": {"seconds": 30}})

            thread = threading.Thread(target=call)
            thread.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                status = httpx.get(f"{server.url}/health").json()["apps"]["robust"]
                if status["replicas"][0]["in_flight"]:
                    break
                time.sleep(0.05)
            server.process.send_signal(15)
            thread.join(30)
        response = answer["response"]
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["type"] == "app_stopped"
    finally:
        assert server.stop() == 0, server.logs()


# -- generated hostile bodies ---------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=10), children, max_size=8)
    ),
    max_leaves=60,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "input": json_values,
            # Only wrong types: a valid setup swaps the child, at a setup's cost.
            "setup": json_values.filter(lambda v: not isinstance(v, dict)),
            "function": json_values,
            "stream": json_values,
            "timeout": json_values,
            "request_id": json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=3000).map(lambda n: nested(n).encode()),
    st.binary(max_size=200),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_generated_hostile_bodies_never_break_the_app(robust: Server, body: bytes) -> None:
    response = post_raw(robust, body)
    assert response.status_code < 500 or response.json()["error"]["type"] in (
        "app_exception",
        "timeout",
    ), response.text
    if response.status_code >= 400:
        assert "error" in response.json()
    assert robust.client.get("/health").status_code == 200
    check = robust.client.post("/run", json={"input": {"text": "ok"}})
    assert check.status_code == 200, check.text


def test_connections_beyond_the_cap_get_503(tmp_path: Path) -> None:
    server = Server(
        [str(APPS / "robust"), "--max-connections", "3", "--header-timeout", "30"],
        log=tmp_path / "server.log",
    )
    try:
        server.wait_ready()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                # Served until the server has accepted the three idle connections.
                deadline = time.monotonic() + 30
                while True:
                    refused = client.post("/run", json={"input": {"text": "x"}})
                    if refused.status_code != 200 or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            assert refused.status_code == 503
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while True:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                response = client.post("/run", json={"input": {"text": "x"}})
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert response.status_code == 200, response.text
    finally:
        assert server.stop() == 0, server.logs()
