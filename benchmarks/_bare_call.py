"""The least a Python HTTP front end over this runtime can do: the floor under ``serve``.

``python benchmarks/_bare_call.py PORT`` starts ``benchmarks/apps/empty`` with the
library (``pool_size=0``, as the library row of ``http_split.py`` and
``http_serve.py``), then serves a bare ASGI application on uvicorn with the loop and
protocol ``serve`` uses (uvloop, httptools): every request's body is parsed as
JSON, its ``input`` passed to ``app.call()``, and the output answered as
``{"output": ...}``. No routing, no checks, no limits, no metrics, no request id:
what remains is the HTTP server, the JSON, and the call. ``http_split.py`` starts it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn
import uvloop
from _common import APPS_DIR, make_supervisor
from _starlette_echo import SERVER_OPTIONS

HEADERS = [(b"content-type", b"application/json")]


async def serve(port: int) -> None:
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(APPS_DIR / "empty")

        async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = json.loads(b"".join(chunks) or b"{}")
            result = await app.call(body.get("input", {}))
            out = json.dumps({"output": result.output}).encode()
            length = (b"content-length", str(len(out)).encode())
            await send(
                {"type": "http.response.start", "status": 200, "headers": [*HEADERS, length]}
            )
            await send({"type": "http.response.body", "body": out})

        # The echo's settings; the loop is this one (uvloop), already running.
        config = uvicorn.Config(bare, port=port, loop="none", **SERVER_OPTIONS)
        await uvicorn.Server(config).serve()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
