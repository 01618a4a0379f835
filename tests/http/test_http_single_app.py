"""The README's server: ``python -m supervisor serve examples/hello``, one app at the root."""

from __future__ import annotations

import json
import time

import httpx
from http_helpers import Server, metric_value, sse_events


def test_health_reports_the_ready_app(hello: Server) -> None:
    response = hello.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["apps"]["hello"]["ready"] is True
    assert body["apps"]["hello"]["pids"]


def test_run_defaults_to_the_run_function(hello: Server) -> None:
    response = hello.client.post("/run", json={"input": {"name": "Ada"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"]["greeting"] == "Hello, Ada!"
    assert body["request_id"] == response.headers["x-request-id"]
    assert set(body["timings"]) >= {"queued", "run", "total"}


def test_function_by_body_and_by_path(hello: Server) -> None:
    by_body = hello.client.post("/run", json={"function": "reverse", "input": {"text": "abc"}})
    by_path = hello.client.post("/run/reverse", json={"input": {"text": "abc"}})
    assert by_body.json()["output"]["text"] == by_path.json()["output"]["text"] == "cba"
    # The app is also reachable under its name.
    named = hello.client.post("/apps/hello/run/reverse", json={"input": {"text": "xy"}})
    assert named.json()["output"]["text"] == "yx"


def test_client_request_id_is_kept(hello: Server) -> None:
    response = hello.client.post("/run", json={"input": {"name": "B"}, "request_id": "my-id.1"})
    assert response.json()["request_id"] == "my-id.1"


def test_validation_error_is_422_with_field_errors(hello: Server) -> None:
    response = hello.client.post("/run", json={"input": {}})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation"
    assert any("name" in map(str, e["loc"]) for e in error["errors"])


def test_unknown_function_is_422(hello: Server) -> None:
    response = hello.client.post("/run/nope", json={"input": {}})
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "unknown_function"


def test_malformed_bodies(hello: Server) -> None:
    not_json = hello.client.post(
        "/run", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "bad_request"
    wrong_types = hello.client.post("/run", json={"input": [1], "request_id": "../x"})
    assert wrong_types.status_code == 422
    locs = {tuple(e["loc"]) for e in wrong_types.json()["error"]["errors"]}
    assert locs == {("body", "input"), ("body", "request_id")}
    assert hello.client.get("/run").status_code == 405
    missing = hello.client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"


def test_sse_stream_by_body_flag(hello: Server) -> None:
    with hello.client.stream(
        "POST", "/run/count", json={"input": {"n": 3}, "stream": True, "request_id": "sse-1"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names == ["start", "partial", "partial", "partial", "result"]
    assert events[0][1]["request_id"] == "sse-1"
    assert [data["output"]["n"] for name, data in events if name == "partial"] == [1, 2, 3]
    assert events[-1][1]["output"]["n"] == 3


def test_sse_stream_by_accept_header_and_error_event(hello: Server) -> None:
    headers = {"Accept": "text/event-stream"}
    with hello.client.stream("POST", "/run", json={"input": {}}, headers=headers) as response:
        events = sse_events(response)
    assert [name for name, _ in events] == ["start", "error"]
    assert events[1][1]["status"] == 422
    assert events[1][1]["error"]["type"] == "validation"


def test_disconnecting_cancels_the_stream(hello: Server) -> None:
    body = {"input": {"n": 1000, "delay": 0.05}, "stream": True}
    with hello.client.stream("POST", "/run/count", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and '"n": 2' in line:
                break
    # The request is cancelled: recorded as disconnected, and the child is free again.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = hello.client.get("/metrics").text
        status = hello.client.get("/health").json()["apps"]["hello"]
        recorded = metric_value(
            text, "appvisor_requests_total", app="hello", function="count", outcome="disconnected"
        )
        if recorded and all(replica["in_flight"] == 0 for replica in status["replicas"]):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the disconnected stream was not cancelled: {status}")


def test_setup_per_request_changes_the_greeting(hello: Server) -> None:
    response = hello.client.post(
        "/run", json={"input": {"name": "C"}, "setup": {"greeting": "Ahoy"}}
    )
    assert response.json()["output"]["greeting"] == "Ahoy, C!"
    back = hello.client.post("/run", json={"input": {"name": "C"}, "setup": {"greeting": "Hello"}})
    assert back.json()["output"]["greeting"] == "Hello, C!"


def test_cancel_unknown_request_is_404(hello: Server) -> None:
    response = hello.client.post("/cancel/no-such-request")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_no_auth_configured_means_no_token_needed(hello: Server) -> None:
    assert httpx.get(f"{hello.url}/openapi.json").status_code == 200
    assert httpx.get(f"{hello.url}/metrics").status_code == 200


def test_openapi_document(hello: Server) -> None:
    spec = hello.client.get("/openapi.json").json()
    assert spec["openapi"] == "3.1.0"
    assert {"/run/run", "/run/reverse", "/run/count", "/cancel/{request_id}", "/health"} <= set(
        spec["paths"]
    )
    schemas = spec["components"]["schemas"]
    run_input = schemas["hello.run.Input"]
    assert run_input["required"] == ["name"]
    operation = spec["paths"]["/run/count"]["post"]
    assert operation["x-streaming"] is True
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["properties"]["input"]["$ref"] == "#/components/schemas/hello.count.Input"
    assert body_schema["properties"]["setup"] == {"$ref": "#/components/schemas/hello.Setup"}
    assert {"200", "422", "500", "503", "504"} <= set(operation["responses"])
    text = json.dumps(spec)
    assert "#/$defs/" not in text
    for ref in _refs(spec):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert "security" not in spec


def test_docs_page(hello: Server) -> None:
    response = hello.client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'src="docs/swagger-ui-bundle.js"' in response.text
    assert 'url: "openapi.json"' in response.text


def test_metrics_count_requests_and_cold_start(hello: Server) -> None:
    hello.client.post("/run", json={"input": {"name": "M"}})
    response = hello.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    ok = metric_value(text, "appvisor_requests_total", app="hello", function="run", outcome="ok")
    assert ok is not None and ok >= 1
    assert metric_value(text, "appvisor_request_duration_seconds_count", app="hello") is not None
    cold = metric_value(text, "appvisor_cold_start_seconds", app="hello")
    assert cold is not None and cold > 0
    assert metric_value(text, "appvisor_app_ready", app="hello") == 1.0
    assert metric_value(text, "appvisor_restarts_total", app="hello") is not None
    rss = metric_value(text, "appvisor_child_rss_bytes", app="hello")
    assert rss is not None and rss > 0


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []
