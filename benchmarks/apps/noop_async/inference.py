"""Benchmark app: an async no-op ``run``, safe to call concurrently (max_concurrency > 1).

``delay`` (seconds, default 0) makes a call take that long without using the CPU,
which recovery.py uses to spread a request stream over time.
"""

import asyncio

from pydantic import BaseModel


class Input(BaseModel):
    i: int = 0
    delay: float = 0.0


class Output(BaseModel):
    i: int


class App:
    async def setup(self) -> None:
        pass

    async def run(self, input_data: Input) -> Output:
        if input_data.delay:
            await asyncio.sleep(input_data.delay)
        return Output(i=input_data.i)
