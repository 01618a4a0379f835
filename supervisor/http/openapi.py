"""The OpenAPI 3.1 document of a server, built from what the children report.

The supervisor never imports an app, so the schemas come from the app
description each child sends (``App.functions``): one path per function, with
its input and output schemas as components, plus ``POST /run`` naming the
function in its body. Pydantic puts nested models under ``$defs`` with
``#/$defs/...`` references, which would dangle inside an OpenAPI document; they
are lifted into ``components/schemas`` and the references rewritten. A ``File``
output is described as the object the server returns (a download URL and its
metadata), not as the string the SDK's schema says; a ``File`` input can also
be uploaded, so each function with one gets a ``multipart/form-data`` body with
a binary part per File field. An app's ``input.json`` becomes the example of
its ``run`` function. Every endpoint is described, each path parameter
declared, and the tests check the document with ``openapi-spec-validator``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from .files import is_file_schema

OPENAPI_VERSION = "3.1.0"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class DescribedApp(Protocol):
    name: str
    app_dir: Path

    @property
    def functions(self) -> dict[str, dict[str, Any]]: ...

    @property
    def setup_schema(self) -> dict[str, Any] | None: ...


FILE_OUTPUT = {
    "type": "object",
    "description": "A file the app produced, downloadable from this server.",
    "properties": {
        "uri": {"type": "string", "format": "uri", "description": "Download URL"},
        "filename": {"type": "string"},
        "content_type": {"type": "string"},
        "size": {"type": "integer"},
    },
    "required": ["uri"],
}
ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "type": {
                    "type": "string",
                    "description": "validation, app_exception, timeout, ...",
                },
                "message": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["type", "message"],
            "additionalProperties": True,
        }
    },
    "required": ["error"],
}
ERROR_STATUSES = {
    "400": "Malformed request body",
    "401": "Missing or wrong bearer token",
    "404": "Unknown app",
    "409": "The request was cancelled",
    "422": "Invalid input, or unknown function",
    "429": "The app's queue is full",
    "500": "The app raised, or its setup failed",
    "502": "The child broke the protocol",
    "503": "Not ready, crashed, stopped, out of memory or no GPU memory to admit it",
    "504": "The request timed out",
}


def app_prefix(name: str, single: bool) -> str:
    return "" if single else f"/apps/{name}"


def read_example(app_dir: Path) -> dict[str, Any] | None:
    """The app's ``input.json``, when it holds a JSON object."""
    try:
        value = json.loads((Path(app_dir) / "input.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def build_openapi(
    apps: Mapping[str, DescribedApp],
    *,
    auth: bool,
    title: str = "appvisor",
    pending: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The document for ``apps``; ``pending`` names apps still starting (not described yet)."""
    single = len(apps) + len(pending) == 1
    schemas: dict[str, Any] = {"Error": ERROR, "FileOutput": FILE_OUTPUT}
    paths: dict[str, Any] = {}
    for name, app in apps.items():
        prefix = app_prefix(name, single)
        setup = app.setup_schema
        setup_ref = (
            _add_schema(schemas, f"{_component_name(name)}.Setup", setup, False) if setup else None
        )
        example = read_example(app.app_dir)
        for function, info in app.functions.items():
            base = _component_name(f"{name}.{function}")
            input_schema = info.get("input_schema") or {}
            input_ref = _add_schema(schemas, f"{base}.Input", input_schema, False)
            output_ref = _add_schema(
                schemas, f"{base}.Output", info.get("output_schema") or {}, True
            )
            paths[f"{prefix}/run/{function}"] = {
                "post": _run_operation(
                    name,
                    function,
                    info,
                    RunBody(input_ref, setup_ref, file_fields(input_schema)),
                    output_ref,
                    example if function == "run" else None,
                )
            }
        paths[f"{prefix}/run"] = {"post": _run_any_operation(name, app, setup_ref, example)}
        paths[f"{prefix}/cancel/{{request_id}}"] = {"post": _cancel_operation(name)}
        paths[f"{prefix}/restart"] = {"post": _restart_operation(name)}
    paths["/health"] = {"get": _simple("Every app's status", "health", public=True)}
    paths["/health/live"] = {"get": _simple("200 while the server runs", "live", public=True)}
    paths["/health/ready"] = {
        "get": _simple(
            "200 when every app is available, else 503 with each app's state",
            "ready",
            public=True,
            unavailable=True,
        )
    }
    paths["/metrics"] = {"get": _simple("Prometheus metrics", "metrics", "text/plain")}
    paths["/openapi.json"] = {"get": _simple("This document", "openapi")}
    paths["/docs"] = {"get": _simple("Interactive documentation", "docs", "text/html", public=True)}
    paths["/files/{request_id}/{token}/{filename}"] = {"get": _file_operation()}
    names = sorted([*apps, *pending])
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": "1",
            "description": "Apps served by appvisor: "
            + ", ".join(names)
            + (f" (still starting: {', '.join(pending)})" if pending else ""),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "--auth-token"}
        }
        document["security"] = [{"bearer": []}]
    return document


def file_fields(schema: Mapping[str, Any]) -> list[str]:
    """The dotted paths of an input's ``File`` fields (``image``, ``images.0``, ``page.scan``),
    the names of their upload parts."""
    defs = schema.get("$defs") if isinstance(schema.get("$defs"), Mapping) else {}
    return sorted(set(_file_paths(schema, "", defs or {}, 0)))


def _file_paths(node: Any, path: str, defs: Mapping[str, Any], depth: int) -> Iterator[str]:
    if not isinstance(node, Mapping) or depth > 16:
        return
    if is_file_schema(node):
        if path:
            yield path
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        yield from _file_paths(defs.get(ref.removeprefix("#/$defs/")), path, defs, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        for option in node.get(key) or ():
            yield from _file_paths(option, path, defs, depth + 1)
    items = node.get("items")
    if items is not None:
        yield from _file_paths(items, f"{path}.0" if path else "0", defs, depth + 1)
    for name, prop in (node.get("properties") or {}).items():
        yield from _file_paths(prop, f"{path}.{name}" if path else name, defs, depth + 1)


def _component_name(text: str) -> str:
    return _UNSAFE.sub("_", text)


def _add_schema(
    schemas: dict[str, Any], name: str, schema: Mapping[str, Any], output: bool
) -> dict[str, str]:
    """Add ``schema`` under ``name`` with its ``$defs`` lifted; return a reference to it."""
    body = copy.deepcopy(dict(schema))
    defs = body.pop("$defs", {}) or {}
    renamed: dict[str, str] = {}
    for def_name, definition in defs.items():
        candidate = _component_name(def_name)
        if candidate in schemas and schemas[candidate] != definition:
            candidate = _component_name(f"{name}.{def_name}")
        renamed[def_name] = candidate
    for def_name, definition in defs.items():
        schemas[renamed[def_name]] = _rewrite(definition, renamed, output)
    schemas[name] = _rewrite(body, renamed, output)
    return {"$ref": f"#/components/schemas/{name}"}


def _rewrite(node: Any, renamed: Mapping[str, str], output: bool) -> Any:
    if isinstance(node, dict):
        if output and is_file_schema(node):
            return {"$ref": "#/components/schemas/FileOutput"}
        result = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                target = value.removeprefix("#/$defs/")
                result[key] = f"#/components/schemas/{renamed.get(target, target)}"
            else:
                result[key] = _rewrite(value, renamed, output)
        return result
    if isinstance(node, list):
        return [_rewrite(item, renamed, output) for item in node]
    return node


class RunBody:
    """What a run body holds for one function: its input, setup and File fields."""

    def __init__(
        self, input_ref: dict[str, Any], setup_ref: dict[str, str] | None, files: list[str]
    ) -> None:
        self.input_ref = input_ref
        self.setup_ref = setup_ref
        self.files = files

    def json_schema(self, function: dict[str, Any] | None = None) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        if function is not None:
            properties["function"] = function
        properties.update(
            {
                "input": {**self.input_ref, "description": "The function's input ({} if absent)"}
                if "$ref" in self.input_ref
                else self.input_ref,
                "setup": self.setup_ref or {"type": "object"},
                "stream": {
                    "type": "boolean",
                    "default": False,
                    "description": "Answer with Server-Sent Events",
                },
                "request_id": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9_.-]{1,128}$",
                    "description": "Your id for the request (a random one by default)",
                    "examples": ["my-request-1"],
                },
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "Seconds before the request times out",
                    "examples": [60],
                },
            }
        )
        return {"type": "object", "properties": properties}

    def multipart(self, example: dict[str, Any] | None) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "request": {
                "type": "string",
                "description": 'The JSON body ({"input": {...}}); File fields may be left out '
                "of it and uploaded as parts named by their dotted path",
                "examples": [json.dumps(example or {"input": {}})],
            }
        }
        for path in self.files:
            properties[path] = {
                "type": "string",
                "format": "binary",
                "contentMediaType": "application/octet-stream",
                "description": f"An upload for the File field {path}",
            }
        return {"schema": {"type": "object", "properties": properties}}


RESULT_DESCRIPTION = (
    "The output; with stream or Accept: text/event-stream, an SSE stream of start, log, "
    "progress, partial, then result or error events"
)


def _responses(output_ref: dict[str, Any]) -> dict[str, Any]:
    result = {
        "type": "object",
        "properties": {
            "output": output_ref,
            "request_id": {"type": "string"},
            "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        },
        "required": ["output", "request_id"],
    }
    responses: dict[str, Any] = {
        "200": {
            "description": RESULT_DESCRIPTION,
            "content": {
                "application/json": {"schema": result},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    responses.update(
        {code: {"description": text, "content": error} for code, text in ERROR_STATUSES.items()}
    )
    return responses


def _run_operation(
    app: str,
    function: str,
    info: Mapping[str, Any],
    body: RunBody,
    output_ref: dict[str, str],
    example: dict[str, Any] | None,
) -> dict[str, Any]:
    json_media: dict[str, Any] = {"schema": body.json_schema()}
    wrapped = {"input": example} if example is not None else None
    if wrapped is not None:
        json_media["examples"] = {
            "input.json": {"summary": "The app's input.json", "value": wrapped}
        }
    content: dict[str, Any] = {"application/json": json_media}
    content["multipart/form-data"] = body.multipart(wrapped)
    return {
        "operationId": _component_name(f"{app}.{function}"),
        "summary": info.get("description") or function,
        "tags": [app],
        "requestBody": {"required": False, "content": content},
        "responses": _responses(output_ref),
        "x-streaming": bool(info.get("streaming")),
    }


def _run_any_operation(
    app: str, described: DescribedApp, setup_ref: dict[str, str] | None, example: Any
) -> dict[str, Any]:
    functions = sorted(described.functions)
    body = RunBody(
        {"type": "object", "description": "The input of the function named by 'function'"},
        setup_ref,
        sorted(
            {
                f
                for info in described.functions.values()
                for f in file_fields(info.get("input_schema") or {})
            }
        ),
    )
    function = {"type": "string", "enum": functions, "default": "run"}
    json_media: dict[str, Any] = {"schema": body.json_schema(function)}
    wrapped = {"function": "run", "input": example} if example is not None else None
    if wrapped is not None:
        json_media["examples"] = {
            "input.json": {"summary": "The app's input.json", "value": wrapped}
        }
    return {
        "operationId": _component_name(f"{app}.call"),
        "summary": "Run the function named in the body (run by default)",
        "tags": [app],
        "requestBody": {
            "required": False,
            "content": {
                "application/json": json_media,
                "multipart/form-data": body.multipart(wrapped),
            },
        },
        "responses": _responses({"description": "The function's output"}),
    }


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _cancel_operation(app: str) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "operationId": _component_name(f"{app}.cancel"),
        "summary": "Cancel a queued or running request",
        "tags": [app],
        "parameters": [_path_parameter("request_id", "The request's id (X-Request-Id)")],
        "responses": {
            "200": {
                "description": "Cancelled",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "401": {"description": ERROR_STATUSES["401"], "content": error},
            "404": {"description": "No such request in flight", "content": error},
        },
    }


def _restart_operation(app: str) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "operationId": _component_name(f"{app}.restart"),
        "summary": "Restart the app: a failed one is tried again at once, a running one "
        "gets fresh children once their requests are done",
        "tags": [app],
        "responses": {
            "200": {
                "description": "Restarted",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "401": {"description": ERROR_STATUSES["401"], "content": error},
            "503": {"description": "The app is stopped", "content": error},
        },
    }


def _file_operation() -> dict[str, Any]:
    return {
        "operationId": "file",
        "summary": "Download a file an app returned",
        "parameters": [
            _path_parameter("request_id", "The request that returned the file"),
            _path_parameter("token", "The file's unguessable token"),
            _path_parameter("filename", "The file's name"),
        ],
        "responses": {
            "200": {
                "description": "The file",
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            },
            "404": {"description": "No such file (or it expired)"},
        },
    }


def _simple(
    summary: str,
    operation: str,
    media: str = "application/json",
    *,
    public: bool = False,
    unavailable: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": operation,
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {media: {}}}},
    }
    if unavailable:
        op["responses"]["503"] = {"description": "Not ready", "content": {media: {}}}
    if public:
        op["security"] = []
    return op
