"""The status page at ``/`` (and ``/ui``): plain HTML and JavaScript polling ``/status``.

No framework and no CDN: the page is one file (``status_page.html``), and its
script fetches ``/status`` every two seconds and redraws the apps (state,
replicas, restarts with their reasons, queue and in-flight counts, recent
logs) and a memory bar per GPU (used, promised to budgets not yet in use,
free). The page itself is public; ``/status`` needs the token when the server
has one, which the page asks for (kept in the tab's session storage, shared
with ``/docs``; ``#token=...`` in the address fills it in).
"""

from __future__ import annotations

import json
from importlib import resources

REFRESH_MS = 2000


def render_page(refresh_ms: int = REFRESH_MS) -> str:
    page = resources.files(__package__).joinpath("status_page.html").read_text("utf-8")
    return page.replace("__REFRESH__", json.dumps(refresh_ms))
