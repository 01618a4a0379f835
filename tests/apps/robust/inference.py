"""An app for the isolation tests: a setup model, and functions that block in
different ways (a sync sleep that ignores cancels, an async one that blocks the
event loop)."""

import asyncio
import os
import time

from pydantic import BaseModel


class AppSetup(BaseModel):
    greeting: str = "Hello"


class TextInput(BaseModel):
    text: str = ""
    extra: dict | list | None = None


class TextOutput(BaseModel):
    text: str
    pid: int


class SleepInput(BaseModel):
    seconds: float


class SleepOutput(BaseModel):
    slept: float
    pid: int


class App:
    async def setup(self, config: AppSetup) -> None:
        if config.greeting == "explode":
            raise RuntimeError("this greeting makes setup fail")
        self.greeting = config.greeting

    async def run(self, input_data: TextInput) -> TextOutput:
        return TextOutput(text=f"{self.greeting}, {input_data.text}", pid=os.getpid())

    def sync_sleep(self, input_data: SleepInput) -> SleepOutput:
        """Sleep in a worker thread: a cancel cannot interrupt it."""
        time.sleep(input_data.seconds)
        return SleepOutput(slept=input_data.seconds, pid=os.getpid())

    async def block_loop(self, input_data: SleepInput) -> SleepOutput:
        """Sleep without yielding: the event loop is blocked, as by a forward pass."""
        time.sleep(input_data.seconds)
        return SleepOutput(slept=input_data.seconds, pid=os.getpid())

    async def nap(self, input_data: SleepInput) -> SleepOutput:
        await asyncio.sleep(input_data.seconds)
        return SleepOutput(slept=input_data.seconds, pid=os.getpid())
