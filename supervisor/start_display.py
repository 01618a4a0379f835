"""On a terminal, what a starting app is doing: ``hello: setting_up 4.2s``.

A model that loads for nine seconds without a word looks like a hang. While
``run`` starts its app, a one-line status (its replicas' state and the time
spent) is redrawn on stderr, after ``delay`` seconds so that quick starts do
not flash. The app's own output and progress bars print above it (tqdm).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

import anyio
from tqdm import tqdm

from .core.app import App


async def show_start(
    name: str,
    lookup: Callable[[str], App | None],
    stream: IO[str],
    *,
    delay: float = 1.0,
    interval: float = 0.1,
) -> None:
    """Redraw ``name``'s start state until cancelled (when the start is over)."""
    await anyio.sleep(delay)
    bar: tqdm[Any] = tqdm(total=None, file=stream, bar_format="{desc} {elapsed}", leave=False)
    try:
        while True:
            app = lookup(name)
            state = app.status()["state"] if app is not None else "pending"
            bar.set_description_str(f"{name}: {state}", refresh=False)
            bar.refresh()
            await anyio.sleep(interval)
    finally:
        bar.close()
