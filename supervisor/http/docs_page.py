"""``/docs``: Swagger UI, served by the server itself (no CDN), able to run requests.

The Swagger UI assets come from the ``swagger-ui-py`` wheel, which bundles
Swagger UI 5 (``swagger-ui-bundle`` bundles 4.15, which cannot read an
OpenAPI 3.1 document); only the files the page needs are served, under
``/docs/``. The page and its assets need no token, so that a browser can open
them; the document and the API do. With ``--auth-token`` the page shows a
token field above Swagger UI: the token is kept in the tab's session storage,
sent with the document's request, and handed to Swagger UI's Authorize dialog
(which the document's bearer scheme enables), so that "Try it out" works;
``#token=...`` in the address fills it in.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}


def assets_dir() -> Path:
    """The wheel's static directory, found without importing the package (and its
    framework adapters)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("swagger-ui-py is not installed: /docs needs its assets")
    return Path(spec.origin).resolve().parent / "static"


def asset_paths() -> frozenset[str]:
    """The URL paths of the page and its assets: reachable without a token."""
    return frozenset({"/docs", *(f"/docs/{name}" for name in ASSETS)})


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>appvisor API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
<style>
body{margin:0;font-family:system-ui,sans-serif}
#token{padding:.6rem 1.2rem;background:#f6f6f6;border-bottom:1px solid #ddd}
#token input{width:22rem;padding:.2rem}
</style></head>
<body>
<form id="token" hidden>
<label>API token <input type="password" id="token-value" autocomplete="off"></label>
<button type="submit">Use token</button> <span id="token-state"></span>
<a href="./">status page</a>
</form>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>
const AUTH = __AUTH__;
const KEY = "appvisor-token";
if (location.hash.startsWith("#token=")) {
  sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, "", location.pathname);
}
const token = () => sessionStorage.getItem(KEY) || "";
function start() {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: true,
    persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: (request) => {
      const value = token();
      if (value && !request.headers.Authorization) {
        request.headers.Authorization = "Bearer " + value;
      }
      return request;
    },
    onComplete: () => {
      if (token()) window.ui.preauthorizeApiKey("bearer", token());
    },
  });
}
if (AUTH) {
  const form = document.getElementById("token");
  form.hidden = false;
  document.getElementById("token-state").textContent = token() ? "token set" : "no token";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("token-value").value);
    document.getElementById("token-state").textContent = "token set";
    start();
  });
}
start();
</script>
</body></html>
"""


def render_page(auth: bool) -> str:
    return PAGE.replace("__AUTH__", json.dumps(auth))
