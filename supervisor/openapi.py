"""An OpenAPI 3.1 document and a small HTML page built from what the children report.

The supervisor never imports an app, so the schemas come from the app
description each child sends (``App.functions``): one path per function, with
its input and output schemas as components. Pydantic puts nested models under
``$defs`` with ``#/$defs/...`` references, which would dangle inside an OpenAPI
document; they are lifted into ``components/schemas`` and the references
rewritten. A ``File`` output is described as the object the server returns (a
download URL and its metadata), not as the string the SDK's schema says.

``/docs`` is a self-contained page (no Swagger UI, which would need a CDN):
the apps, their functions, schemas and a curl line for each.
"""

from __future__ import annotations

import copy
import html
import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from .http_files import is_file_schema

OPENAPI_VERSION = "3.1.0"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class DescribedApp(Protocol):
    name: str

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


def build_openapi(
    apps: Mapping[str, DescribedApp], *, auth: bool, title: str = "appvisor"
) -> dict[str, Any]:
    single = len(apps) == 1
    schemas: dict[str, Any] = {"Error": ERROR, "FileOutput": FILE_OUTPUT}
    paths: dict[str, Any] = {}
    for name, app in apps.items():
        prefix = app_prefix(name, single)
        setup = app.setup_schema
        setup_ref = (
            _add_schema(schemas, f"{_component_name(name)}.Setup", setup, False) if setup else None
        )
        for function, info in app.functions.items():
            base = _component_name(f"{name}.{function}")
            input_ref = _add_schema(schemas, f"{base}.Input", info.get("input_schema") or {}, False)
            output_ref = _add_schema(
                schemas, f"{base}.Output", info.get("output_schema") or {}, True
            )
            paths[f"{prefix}/run/{function}"] = {
                "post": _run_operation(name, function, info, input_ref, output_ref, setup_ref)
            }
        paths[f"{prefix}/cancel/{{request_id}}"] = {"post": _cancel_operation(name)}
    paths["/health"] = {"get": _simple("Readiness of every app", "health", security=False)}
    paths["/metrics"] = {"get": _simple("Prometheus metrics", "metrics", "text/plain")}
    paths["/files/{request_id}/{token}/{filename}"] = {
        "get": _simple("Download a file an app returned", "file", "application/octet-stream")
    }
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": "1",
            "description": "Apps served by appvisor: " + ", ".join(sorted(apps)),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


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


def _run_operation(
    app: str,
    function: str,
    info: Mapping[str, Any],
    input_ref: dict[str, str],
    output_ref: dict[str, str],
    setup_ref: dict[str, str] | None,
) -> dict[str, Any]:
    body = {
        "type": "object",
        "properties": {
            "input": input_ref,
            "setup": setup_ref or {"type": "object"},
            "stream": {"type": "boolean", "description": "Answer with Server-Sent Events"},
            "request_id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"},
            "timeout": {"type": "number", "description": "Seconds before the request times out"},
        },
        "required": ["input"],
    }
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
            "description": "The output; with stream or Accept: text/event-stream, an SSE stream "
            "of start, log, progress, partial, then result or error events",
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
    return {
        "operationId": _component_name(f"{app}.{function}"),
        "summary": info.get("description") or function,
        "tags": [app],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": body},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "request": {"type": "string", "description": "The JSON body"}
                        },
                        "additionalProperties": {"type": "string", "format": "binary"},
                        "description": "A 'request' part holding the JSON body, and one file "
                        "part per File input, named by its dotted field path",
                    }
                },
            },
        },
        "responses": responses,
        "x-streaming": bool(info.get("streaming")),
    }


def _cancel_operation(app: str) -> dict[str, Any]:
    return {
        "operationId": _component_name(f"{app}.cancel"),
        "summary": "Cancel a queued or running request",
        "tags": [app],
        "parameters": [
            {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {
                "description": "Cancelled",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "404": {"description": "No such request in flight"},
        },
    }


def _simple(
    summary: str, operation: str, media: str = "application/json", *, security: bool = True
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": operation,
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {media: {}}}},
    }
    if not security:
        op["security"] = []
    return op


def render_docs(apps: Mapping[str, DescribedApp], *, auth: bool) -> str:
    """A self-contained HTML page describing every app and function."""
    single = len(apps) == 1
    auth_flag = ' -H "Authorization: Bearer $TOKEN"' if auth else ""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>appvisor</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "pre{background:#f4f4f4;padding:.6rem;overflow:auto;font-size:.85rem}"
        "details{margin:.3rem 0}code{background:#f4f4f4;padding:0 .2rem}",
        "</style></head><body><h1>appvisor</h1>",
        "<p>The machine-readable description is <a href='openapi.json'>openapi.json</a>; "
        "<a href='health'>health</a> and <a href='metrics'>metrics</a> are beside it.</p>",
    ]
    for name, app in apps.items():
        prefix = app_prefix(name, single)
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if app.setup_schema:
            parts.append(_schema_block("setup schema", app.setup_schema))
        for function, info in app.functions.items():
            streaming = " <em>(streaming)</em>" if info.get("streaming") else ""
            parts.append(
                f"<h3><code>POST {html.escape(f'{prefix}/run/{function}')}</code>{streaming}</h3>"
                f"<p>{html.escape(info.get('description') or '')}</p>"
            )
            curl = (
                f"curl -X POST{auth_flag} -H 'Content-Type: application/json' "
                f"http://HOST{prefix}/run/{function} -d '{{\"input\": {{...}}}}'"
            )
            parts.append(f"<pre>{html.escape(curl)}</pre>")
            parts.append(_schema_block("input schema", info.get("input_schema") or {}))
            parts.append(_schema_block("output schema", info.get("output_schema") or {}))
    parts.append("</body></html>")
    return "".join(parts)


def _schema_block(title: str, schema: Mapping[str, Any]) -> str:
    text = html.escape(json.dumps(schema, indent=2))
    return f"<details><summary>{html.escape(title)}</summary><pre>{text}</pre></details>"
