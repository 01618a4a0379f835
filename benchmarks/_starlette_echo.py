"""A bare Starlette JSON echo on uvicorn: the floor under ``serve``'s HTTP layer.

``python benchmarks/_starlette_echo.py PORT`` serves ``POST /run`` answering
``{"output": <input>}`` with the loop and protocol ``serve`` uses (uvloop,
httptools), without access log, lifespan or middleware. ``http_serve.py`` starts it;
``http_layer.py`` calls ``make_app()``'s application directly.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def run(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    return JSONResponse({"output": body.get("input", {})})


def make_app() -> Starlette:
    return Starlette(routes=[Route("/run", run, methods=["POST"])])


SERVER_OPTIONS: dict[str, Any] = {
    "host": "127.0.0.1",
    "http": "httptools",
    "ws": "none",
    "lifespan": "off",
    "access_log": False,
    "log_level": "warning",
}
"""uvicorn's settings for the bare servers (this echo, ``_bare_call.py``), on uvloop."""


def main() -> None:
    uvicorn.run(make_app(), port=int(sys.argv[1]), loop="uvloop", **SERVER_OPTIONS)


if __name__ == "__main__":
    main()
