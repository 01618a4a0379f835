"""An app's traceback as its author wants to read it: the app's frames, not the runtime's.

A traceback from a child runs through the runtime before it reaches the app
(``child/runtime.py``, ``child/app_loader.py``, importlib's bootstrap, anyio's
worker threads), and an import error comes chained to the runtime's own
``AppLoadError``. ``for_people`` drops those frames, and the chained parts that
hold nothing but them, and says how many were hidden; ``--debug`` shows the
text as the child sent it. Pure text in, text out: the child may run another
Python, so the frames are only read, never imported.
"""

from __future__ import annotations

import re
from importlib.util import find_spec
from pathlib import Path

CHAIN = re.compile(
    r"(\n(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)\n\n)"
)
FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')
_CHILD = find_spec("child")  # located, not imported: the supervisor never imports the child
if _CHILD is None or _CHILD.origin is None:
    raise ImportError("the child runtime package is not installed beside the supervisor")
RUNTIME_DIR = str(Path(_CHILD.origin).resolve().parent) + "/"
RUNTIME_PARTS = (
    "<frozen importlib",
    "/importlib/",
    "/anyio/",
    "/asyncio/",
    "/concurrent/futures/",
    "/threading.py",
)
RUNTIME_EXCEPTIONS = ("child.",)


def is_runtime_frame(filename: str) -> bool:
    """Whether a frame belongs to the runtime (or the machinery it calls the app through)."""
    return filename.startswith(RUNTIME_DIR) or any(part in filename for part in RUNTIME_PARTS)


def for_people(text: str) -> str:
    """``text`` without the runtime's frames; unchanged when nothing of the app's is in it."""
    pieces = CHAIN.split(text.rstrip("\n"))
    kept: list[str] = []
    hidden = 0
    for index in range(0, len(pieces), 2):
        lines, dropped, app_frames = _filter(pieces[index].split("\n"))
        hidden += dropped
        exception = next((line for line in reversed(lines) if line.strip()), "")
        if not app_frames and exception.startswith(RUNTIME_EXCEPTIONS):
            continue  # a wrapper the runtime added: the app's error is in another part
        if kept:
            kept.append(pieces[index - 1])
        kept.append("\n".join(lines))
    if not hidden or not kept:
        return text
    note = f"({hidden} runtime frame{'s' if hidden != 1 else ''} hidden; --debug shows them)"
    return "".join(kept) + "\n" + note + "\n"


def _filter(lines: list[str]) -> tuple[list[str], int, int]:
    """Drop each runtime frame (its ``File`` line and the indented lines under it)."""
    kept: list[str] = []
    dropped = app_frames = 0
    skipping = False
    for line in lines:
        match = FRAME.match(line)
        if match:
            skipping = is_runtime_frame(match["file"])
            if skipping:
                dropped += 1
                continue
            app_frames += 1
        elif skipping and line.startswith("    "):
            continue
        else:
            skipping = False
        kept.append(line)
    return kept, dropped, app_frames
