"""The OpenAPI document is valid and complete; /docs is Swagger UI served without a CDN."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from http_helpers import EXAMPLES, TOKEN, Server
from openapi_spec_validator import validate

from supervisor.http.openapi import file_fields


@pytest.fixture(params=["hello", "multi"])
def server(request: pytest.FixtureRequest) -> Server:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def test_the_document_is_valid_openapi_3_1(server: Server) -> None:
    spec = server.client.get("/openapi.json").json()
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises on an invalid document


def test_the_file_download_declares_its_path_parameters(hello: Server) -> None:
    spec = hello.client.get("/openapi.json").json()
    operation = spec["paths"]["/files/{request_id}/{token}/{filename}"]["get"]
    names = [(p["name"], p["in"], p["required"]) for p in operation["parameters"]]
    assert names == [(n, "path", True) for n in ("request_id", "token", "filename")]


def test_post_run_and_every_endpoint_are_described(hello: Server) -> None:
    paths = hello.client.get("/openapi.json").json()["paths"]
    for path in ("/run", "/run/run", "/health", "/health/live", "/health/ready", "/metrics"):
        assert path in paths, path
    assert {"/docs", "/openapi.json", "/cancel/{request_id}"} <= set(paths)
    body = paths["/run"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["function"]["enum"] == ["count", "reverse", "run"]


def _bodies(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        op["requestBody"]
        for path, item in spec["paths"].items()
        for op in item.values()
        if "/run" in path
    ]


def test_input_is_not_required_as_the_server_accepts_a_body_without_it(multi: Server) -> None:
    spec = multi.client.get("/openapi.json").json()
    bodies = _bodies(spec)
    assert bodies
    for body in bodies:
        assert body["required"] is False
        assert "input" not in body["content"]["application/json"]["schema"].get("required", [])
    # ... and indeed it does.
    assert multi.client.post("/apps/hello/run/reverse", json={}).status_code == 422  # text
    assert multi.client.post("/apps/http_faults/run", content=b"").status_code == 200


def test_file_fields_get_a_multipart_form(multi: Server) -> None:
    spec = multi.client.get("/openapi.json").json()
    form = spec["paths"]["/apps/image/run/run"]["post"]["requestBody"]["content"]
    schema = form["multipart/form-data"]["schema"]
    assert schema["properties"]["image"]["format"] == "binary"
    assert schema["properties"]["request"]["type"] == "string"
    read = spec["paths"]["/apps/http_faults/run/read_file"]["post"]["requestBody"]["content"]
    assert {"request", "file", "extra"} == set(read["multipart/form-data"]["schema"]["properties"])


def test_bearer_auth_is_declared_and_health_is_public(multi: Server) -> None:
    spec = multi.client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearer": []}]
    for path in ("/health", "/health/live", "/health/ready", "/docs"):
        assert spec["paths"][path]["get"]["security"] == []
    assert "security" not in spec["paths"]["/apps/hello/run"]["post"]


def test_examples_come_from_each_apps_input_json(multi: Server) -> None:
    spec = multi.client.get("/openapi.json").json()
    hello_example = json.loads((EXAMPLES / "hello" / "input.json").read_text())
    run = spec["paths"]["/apps/hello/run/run"]["post"]["requestBody"]["content"]
    assert run["application/json"]["examples"]["input.json"]["value"] == {"input": hello_example}
    any_function = spec["paths"]["/apps/hello/run"]["post"]["requestBody"]["content"]
    value = any_function["application/json"]["examples"]["input.json"]["value"]
    assert value == {"function": "run", "input": hello_example}
    multipart = run["multipart/form-data"]["schema"]["properties"]["request"]
    assert json.loads(multipart["examples"][0]) == {"input": hello_example}
    # Only run gets the example: input.json is run's input.
    reverse = spec["paths"]["/apps/hello/run/reverse"]["post"]["requestBody"]["content"]
    assert "examples" not in reverse["application/json"]


def test_docs_and_their_assets_need_no_token_and_no_cdn(multi: Server) -> None:
    page = httpx.get(f"{multi.url}/docs")
    assert page.status_code == 200
    assert "const AUTH = true;" in page.text  # the token field is shown
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources, page.text
    for source in sources:
        assert not source.startswith(("http:", "https:", "//")), source
        if source.startswith("docs/"):
            asset = httpx.get(f"{multi.url}/{source}")
            assert asset.status_code == 200, source
            assert len(asset.content) > 1000
    bundle = httpx.get(f"{multi.url}/docs/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text
    # The document and the API still need the token.
    assert httpx.get(f"{multi.url}/openapi.json").status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{multi.url}/openapi.json", headers=headers).status_code == 200
    assert httpx.get(f"{multi.url}/docs/LICENSE").status_code == 401  # not an asset


def test_docs_without_auth_show_no_token_field(hello: Server) -> None:
    assert "const AUTH = false;" in hello.client.get("/docs").text
    assert hello.client.get("/docs/nope.js").status_code == 404


def test_file_fields_of_nested_models_lists_and_optionals() -> None:
    schema = {
        "$defs": {
            "Page": {
                "type": "object",
                "properties": {"scan": {"type": "string", "format": "file"}, "n": {}},
            }
        },
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "file"},
            "images": {"type": "array", "items": {"type": "string", "format": "file"}},
            "mask": {"anyOf": [{"type": "string", "format": "file"}, {"type": "null"}]},
            "page": {"$ref": "#/$defs/Page"},
            "text": {"type": "string"},
        },
    }
    assert file_fields(schema) == ["image", "images.0", "mask", "page.scan"]
