"""An app for the child's error, cancel and unload tests.

Setup takes ``marker_dir``: the app records what happened to it there as files
(``on-cancel``, ``run-cancelled``, ``sync-finished``, ``unloaded``), which the
tests read after the fact. ``fail=True`` makes setup raise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import BaseModel


class AppSetup(BaseModel):
    marker_dir: str = ""
    fail: bool = False
    setup_seconds: float = 0.0
    unload_seconds: float = 0.0


class SleepInput(BaseModel):
    seconds: float


class SleepOutput(BaseModel):
    slept: float


class BoomInput(BaseModel):
    message: str = "boom"


class App:
    def __init__(self) -> None:
        self.marker_dir: Path | None = None

    def setup(self, config: AppSetup):
        if config.fail:
            raise RuntimeError("setup refused: fail=True")
        time.sleep(config.setup_seconds)
        self.unload_seconds = config.unload_seconds
        self.marker_dir = Path(config.marker_dir) if config.marker_dir else None

    def mark(self, name: str) -> None:
        if self.marker_dir is not None:
            (self.marker_dir / name).write_text(name)

    async def sleep(self, input: SleepInput) -> SleepOutput:
        """Sleep asynchronously; records its cancellation."""
        try:
            await asyncio.sleep(input.seconds)
        except asyncio.CancelledError:
            self.mark("run-cancelled")
            raise
        return SleepOutput(slept=input.seconds)

    def sleep_sync(self, input: SleepInput) -> SleepOutput:
        """Sleep in a worker thread, which cannot be interrupted."""
        time.sleep(input.seconds)
        self.mark("sync-finished")
        return SleepOutput(slept=input.seconds)

    async def boom(self, input: BoomInput) -> SleepOutput:
        """Always raises."""
        raise ValueError(f"boom: {input.message}")

    async def nothing(self, input: BoomInput) -> AsyncIterator[SleepOutput]:
        """A streaming function that yields nothing."""
        if input.message == "never":
            yield SleepOutput(slept=0)

    def on_cancel(self):
        self.mark("on-cancel")

    def unload(self):
        time.sleep(getattr(self, "unload_seconds", 0.0))
        self.mark("unloaded")
