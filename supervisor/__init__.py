"""Host side of the runtime: spawn, supervise and talk to app children.

Embed it as a library::

    async with Supervisor() as sup:
        app = await sup.start("examples/hello", setup={"greeting": "Hi"})
        out = await app.run({"name": "Ada"})

The names below are imported when first used, so that ``python -m supervisor
serve`` can start its first child before it imports the rest (``head_start``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import errors
    from .core.app import App
    from .core.restart_policy import RestartPolicy
    from .core.supervisor import Supervisor
    from .events import Event, LogEvent, PartialEvent, ProgressEvent, ResultEvent

_EXPORTS = {
    "App": ".core.app",
    "Event": ".events",
    "LogEvent": ".events",
    "PartialEvent": ".events",
    "ProgressEvent": ".events",
    "RestartPolicy": ".core.restart_policy",
    "ResultEvent": ".events",
    "Supervisor": ".core.supervisor",
}

__all__ = [
    "App",
    "Event",
    "LogEvent",
    "PartialEvent",
    "ProgressEvent",
    "RestartPolicy",
    "ResultEvent",
    "Supervisor",
    "errors",
]


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module(".errors", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
