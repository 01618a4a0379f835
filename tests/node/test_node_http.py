"""Node.js apps behind ``serve`` and ``run``: the same HTTP face as Python apps
(runs, file URLs and uploads, streaming, cancel, /openapi.json, /docs)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_helpers import EXAMPLES, Server, cli, running, sse_events
from node_helpers import APPS, wait_until

HTML = EXAMPLES / "node-html"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, kitchen_env: dict[str, str]
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("node-server") / "server.log"
    with running([str(HTML), str(APPS / "node_kitchen")], log=log) as server:
        yield server


def test_run_returns_a_file_url_that_serves_the_file(server: Server) -> None:
    response = server.client.post("/apps/node-html/run", json={"input": {"name": "Ada"}})
    assert response.status_code == 200, response.text
    card = response.json()["output"]["card"]
    assert card["content_type"] == "text/html" and "path" not in card
    html = server.client.get(card["uri"])
    assert html.status_code == 200 and "Hello, Ada!" in html.text


def test_an_uploaded_file_reaches_the_app(server: Server) -> None:
    png = (EXAMPLES / "image" / "sample.png").read_bytes()
    response = server.client.post(
        "/apps/node-html/run",
        data={"request": json.dumps({"input": {"name": "Bo", "color": "gold"}})},
        files={"photo": ("sample.png", png, "image/png")},
    )
    assert response.status_code == 200, response.text
    html = server.client.get(response.json()["output"]["card"]["uri"]).text
    assert "background:gold" in html and "data:image/png;base64," in html


def test_streaming_over_server_sent_events(server: Server) -> None:
    body = {"function": "words", "input": {"text": "one two three"}, "stream": True}
    with server.client.stream("POST", "/apps/node-html/run", json=body) as response:
        events = sse_events(response)
    assert [name for name, _ in events] == ["start", "partial", "partial", "partial", "result"]
    partials = [data["output"]["word"] for name, data in events if name == "partial"]
    assert partials == ["one", "two", "three"]


def test_validation_errors_are_422(server: Server) -> None:
    response = server.client.post("/apps/node-html/run", json={"input": {"color": "red"}})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation"
    assert {tuple(e["loc"]) for e in error["errors"]} >= {("name",), ("color",)}


def test_cancel_of_a_busy_loop_over_http(server: Server) -> None:
    answers: list[int] = []

    def call() -> None:
        body = {"function": "spin", "input": {}, "request_id": "spin-1"}
        answers.append(server.client.post("/apps/kitchen/run", json=body).status_code)

    caller = threading.Thread(target=call)
    caller.start()
    # 404 until the request is known to the server; then the spinning run is cancelled.
    wait_until(lambda: server.client.post("/apps/kitchen/cancel/spin-1").status_code == 200)
    caller.join(30)
    assert answers == [409]
    after = server.client.post("/apps/kitchen/run/reverse", json={"input": {"text": "ab"}})
    assert after.json()["output"] == {"text": "ba"}


def test_openapi_and_docs_list_the_node_functions(server: Server) -> None:
    paths = server.client.get("/openapi.json").json()["paths"]
    for function in ("run", "reverse", "words"):
        assert f"/apps/node-html/run/{function}" in paths
    assert "/apps/kitchen/run/spin" in paths
    words = paths["/apps/node-html/run/words"]["post"]
    assert "Stream the words of a text" in json.dumps(words)
    # /docs is Swagger UI, which renders that document in the browser.
    assert server.client.get("/docs").status_code == 200


def test_the_example_runs_as_its_input_json_says(tmp_path: Path) -> None:
    result = cli("run", str(HTML), "--output-dir", str(tmp_path))  # not into the checkout
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)["card"]
    assert card["content_type"] == "text/html"
    assert "Hello, Ada!" in Path(card["path"]).read_text()
    assert "node-html | run progress 50% rendering" in result.stderr


def test_cli_run_and_schema(tmp_path: Path) -> None:
    result = cli("run", str(HTML), "--function", "reverse", "--input", '{"text": "abc"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "cba"}
    noisy = cli(
        "run", str(APPS / "node_kitchen"), "--function", "noisy", "--input", '{"text": "z"}'
    )
    assert json.loads(noisy.stdout) == {"ok": True}
    assert "fd 1: z" in noisy.stderr and "subprocess: z" in noisy.stderr
    schema = json.loads(cli("schema", str(HTML)).stdout)
    assert schema["functions"]["run"]["output_schema"]["properties"]["card"]["format"] == "file"
    crash = cli(
        "run", str(APPS / "node_kitchen"), "--function", "crash", "--input", '{"how": "exit"}'
    )
    assert crash.returncode == 5


def test_an_environment_failure_is_exit_code_4(tmp_path: Path) -> None:
    app_dir = tmp_path / "future"
    shutil.copytree(APPS / "node_kitchen", app_dir)
    (app_dir / "inf.yml").write_text("name: future\nkernel: node-99\n")
    result = cli("run", str(app_dir), "--function", "reverse", "--input", '{"text": "a"}')
    assert result.returncode == 4
    assert "environment_failed" in result.stderr and "node-99" in result.stderr
