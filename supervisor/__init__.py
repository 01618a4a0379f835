"""Host side of the runtime: spawn, supervise and talk to app children.

Embed it as a library::

    async with Supervisor() as sup:
        app = await sup.start("examples/hello", setup={"greeting": "Hi"})
        out = await app.run({"name": "Ada"})
"""

from . import errors
from .core.app import App
from .core.restart_policy import RestartPolicy
from .core.supervisor import Supervisor
from .events import Event, LogEvent, PartialEvent, ProgressEvent, ResultEvent

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
