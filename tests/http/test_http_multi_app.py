"""Several apps behind one token: error statuses, cancel, crashes, files in and out."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from http_helpers import EXAMPLES, TOKEN, Server, metric_value, sse_events
from PIL import Image

FAULTS = "/apps/http_faults"


# -- auth -------------------------------------------------------------------------


def test_every_endpoint_but_health_and_docs_needs_the_token(multi: Server) -> None:
    public = httpx.get(f"{multi.url}/health")
    assert public.status_code == 200
    # Without the token, health tells readiness only: no pids, paths or exit details.
    assert public.json()["apps"]["hello"] == {"ready": True, "available": True, "state": "ready"}
    assert "pids" in multi.client.get("/health").json()["apps"]["hello"]
    for method, path in [
        ("POST", "/apps/hello/run"),
        ("POST", "/cancel/x"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/files/a/b/c.txt"),
    ]:
        response = httpx.request(method, f"{multi.url}{path}", json={})
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{multi.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = httpx.get(f"{multi.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200


# -- routing and setup ------------------------------------------------------------


def test_apps_live_under_their_names(multi: Server) -> None:
    response = multi.client.post("/apps/hello/run", json={"input": {"name": "Ada"}})
    assert response.status_code == 200
    assert response.json()["output"]["greeting"] == "Howdy, Ada!"  # --setup hello=...
    root = multi.client.post("/run", json={"input": {"name": "Ada"}})
    assert root.status_code == 404
    unknown = multi.client.post("/apps/nope/run", json={"input": {}})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found"
    health = multi.client.get("/health").json()
    assert set(health["apps"]) == {"hello", "http_faults", "image", "stream"}


def test_openapi_lists_every_app(multi: Server) -> None:
    spec = multi.client.get("/openapi.json").json()
    assert "/apps/http_faults/run/boom" in spec["paths"]
    assert "/apps/image/run/run" in spec["paths"]
    assert spec["security"] == [{"bearer": []}]
    output = spec["components"]["schemas"]["http_faults.make_file.Output"]
    assert output["properties"]["file"] == {"$ref": "#/components/schemas/FileOutput"}


# -- error statuses ---------------------------------------------------------------


def test_app_exception_is_500_with_traceback(multi: Server) -> None:
    response = multi.client.post(f"{FAULTS}/run/boom", json={"input": {"text": "bang"}})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "app_exception"
    assert "boom: bang" in error["message"]
    assert "RuntimeError" in error["traceback"]


def test_timeout_is_504(multi: Server) -> None:
    body = {"input": {"seconds": 10}, "timeout": 0.3}
    response = multi.client.post(f"{FAULTS}/run/sleep", json=body)
    # The 0.3 s timeout: the 10 s sleep itself would have answered 200.
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"


def test_cancel_by_request_id_is_409_for_the_cancelled_call(multi: Server) -> None:
    body = {"input": {"seconds": 10}, "request_id": "to-cancel-1"}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(multi.client.post, f"{FAULTS}/run/sleep", json=body)
        deadline = time.monotonic() + 5
        while True:
            cancel = multi.client.post("/cancel/to-cancel-1")
            if cancel.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert cancel.status_code == 200
        assert cancel.json() == {
            "cancelled": True,
            "request_id": "to-cancel-1",
            "app": "http_faults",
        }
        response = pending.result(timeout=10)
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "cancelled"
    assert multi.client.post(f"{FAULTS}/cancel/to-cancel-1").status_code == 404


def test_disconnect_cancels_a_plain_request(multi: Server) -> None:
    with contextlib.suppress(httpx.TimeoutException):
        multi.client.post(f"{FAULTS}/run/sleep", json={"input": {"seconds": 10}}, timeout=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = multi.client.get("/metrics").text
        if metric_value(
            text,
            "appvisor_requests_total",
            app="http_faults",
            function="sleep",
            outcome="disconnected",
        ):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the disconnect was not recorded")
    quick = multi.client.post(f"{FAULTS}/run/sleep", json={"input": {"seconds": 0}}, timeout=5)
    assert quick.status_code == 200


def test_crash_mid_request_is_503_then_the_app_recovers(multi: Server) -> None:
    before = multi.client.post(FAULTS + "/run", json={"input": {"text": "a"}}).json()["output"]
    response = multi.client.post(f"{FAULTS}/run/crash", json={"input": {}})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "child_crashed"
    assert error["exit_code"] == 3
    after = multi.client.post(FAULTS + "/run", json={"input": {"text": "b"}})
    assert after.status_code == 200
    assert after.json()["output"]["pid"] != before["pid"]
    text = multi.client.get("/metrics").text
    restarts = metric_value(text, "appvisor_restarts_total", app="http_faults")
    assert restarts is not None and restarts >= 1
    crashed = metric_value(
        text,
        "appvisor_requests_total",
        app="http_faults",
        function="crash",
        outcome="child_crashed",
    )
    assert crashed == 1


# -- files out --------------------------------------------------------------------


def test_output_files_come_back_as_urls(multi: Server) -> None:
    response = multi.client.post(
        f"{FAULTS}/run/make_file", json={"input": {"content": "hello file", "name": "note.txt"}}
    )
    assert response.status_code == 200
    body = response.json()
    file = body["output"]["file"]
    assert "path" not in file
    assert file["filename"] == "note.txt"
    assert file["size"] == len("hello file")
    assert file["uri"].startswith(f"{multi.url}/files/{body['request_id']}/")
    assert body["output"]["files"][0]["uri"] == file["uri"]
    download = multi.client.get(file["uri"])
    assert download.status_code == 200
    assert download.text == "hello file"
    assert download.headers["content-type"].startswith("text/plain")
    # The token, the request id and the name must all match; no token, no file.
    prefix, token, name = file["uri"].rsplit("/", 2)
    assert multi.client.get(f"{prefix}/{token}x/{name}").status_code == 404
    assert multi.client.get(f"{prefix}/{token}/other.txt").status_code == 404
    assert httpx.get(file["uri"]).status_code == 401


def test_image_example_over_http(multi: Server) -> None:
    png = (EXAMPLES / "image" / "sample.png").read_bytes()
    response = multi.client.post(
        "/apps/image/run",
        data={"request": json.dumps({"input": {"size": 16}})},
        files={"image": ("sample.png", png, "image/png")},
    )
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert (output["original_width"], output["original_height"]) == (64, 48)
    assert max(output["width"], output["height"]) == 16
    image = Image.open(io.BytesIO(multi.client.get(output["image"]["uri"]).content))
    assert image.mode == "L"
    assert image.size == (output["width"], output["height"])


# -- files in ---------------------------------------------------------------------


def _read(multi: Server, file_input: object, **extra: object) -> httpx.Response:
    return multi.client.post(
        f"{FAULTS}/run/read_file", json={"input": {"file": file_input, **extra}}
    )


def test_data_uri_input(multi: Server) -> None:
    data = b"some bytes"
    uri = "data:application/octet-stream;base64," + base64.b64encode(data).decode()
    response = _read(multi, uri)
    assert response.status_code == 200, response.text
    assert response.json()["output"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_uploads_by_dotted_field_path(multi: Server) -> None:
    response = multi.client.post(
        f"{FAULTS}/run/read_file",
        data={"request": json.dumps({"input": {}})},
        files={
            "file": ("a.bin", b"12345", "application/x-test"),
            "extra": ("../../b.txt", b"xyz", "text/plain"),
        },
    )
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["size"] == 5
    assert output["content_type"] == "application/x-test"
    assert output["extra_size"] == 3
    bad_name = multi.client.post(
        f"{FAULTS}/run/read_file",
        data={"request": json.dumps({"input": {}})},
        files={"file..x": ("a.bin", b"1")},
    )
    assert bad_name.status_code == 422


def test_local_path_under_an_allowed_dir(multi: Server, allowed_dir: Path) -> None:
    target = allowed_dir / "input.txt"
    target.write_bytes(b"allowed")
    response = _read(multi, str(target))
    assert response.status_code == 200, response.text
    assert response.json()["output"]["size"] == len(b"allowed")
    as_dict = _read(multi, {"path": str(target)})
    assert as_dict.status_code == 200
    as_url = _read(multi, target.as_uri())
    assert as_url.status_code == 200, as_url.text


def test_local_paths_elsewhere_are_refused(multi: Server, allowed_dir: Path) -> None:
    link = allowed_dir / "escape"
    if not link.exists():
        os.symlink("/etc", link)
    for refused in [
        "/etc/hostname",
        {"path": "/etc/hostname"},
        {"uri": "https://example.invalid/x", "path": "/etc/hostname"},
        f"{allowed_dir}/../../etc/hostname",
        str(link / "hostname"),
        "file:///etc/hostname",
        "relative/path.txt",
        "ftp://example.invalid/x",
    ]:
        response = _read(multi, refused)
        assert response.status_code == 422, refused
        error = response.json()["error"]
        assert error["type"] == "validation"
        assert error["errors"][0]["loc"] == ["input", "file"], refused
    optional = _read(multi, "data:,x", extra="/etc/hostname")
    assert optional.status_code == 422
    assert optional.json()["error"]["errors"][0]["loc"] == ["input", "extra"]


# -- streaming with logs and progress ---------------------------------------------


def test_stream_example_sends_log_progress_partial_result(multi: Server) -> None:
    body = {"input": {"prompt": "hi", "max_tokens": 4, "delay": 0}, "stream": True}
    with multi.client.stream("POST", "/apps/stream/run", json=body) as response:
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "result"
    assert "log" in names
    progress = [data for name, data in events if name == "progress"]
    assert [p["fraction"] for p in progress] == [0.25, 0.5, 0.75, 1.0]
    partials = [data["output"]["text"] for name, data in events if name == "partial"]
    assert len(partials) == 4
    assert events[-1][1]["output"]["done"] is True
