"""An async plain app for concurrency tests: ``run`` sleeps and echoes.

It records how many runs were in progress at once (``peak``). Setup may name a
``marker`` file that ``unload`` writes, so tests can see that unload ran.
``hang`` waits forever in a cancellable way; ``block`` holds the event loop
(``time.sleep`` in async code, as a badly written app would), so the child
reads nothing meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class Input(BaseModel):
    text: str = ""
    delay: float = 0.0
    hang: bool = False
    block: float = 0.0
    started: str = ""
    gate: str = ""


class Output(BaseModel):
    text: str
    pid: int
    active: int
    peak: int
    tag: str


class App:
    async def setup(self, config: Any) -> None:
        self.marker = config.get("marker")
        self.tag = str(config.get("tag", ""))
        self.active = 0
        self.peak = 0

    async def run(self, input_data: Input) -> Output:
        self.active += 1
        self.peak = max(self.peak, self.active)
        active = self.active
        if input_data.started:
            Path(input_data.started).touch()
        try:
            if input_data.block:
                time.sleep(input_data.block)
            if input_data.hang:
                await asyncio.sleep(1000)
            await asyncio.sleep(input_data.delay)
            while input_data.gate and not Path(input_data.gate).exists():
                await asyncio.sleep(0.01)
        finally:
            self.active -= 1
        return Output(
            text=input_data.text, pid=os.getpid(), active=active, peak=self.peak, tag=self.tag
        )

    async def unload(self) -> None:
        if self.marker:
            Path(self.marker).write_text(f"unloaded {os.getpid()}")
