"""Benchmark app: an async no-op ``run``, safe to call concurrently (max_concurrency > 1)."""

from pydantic import BaseModel


class Input(BaseModel):
    i: int = 0


class Output(BaseModel):
    i: int


class App:
    async def setup(self) -> None:
        pass

    async def run(self, input_data: Input) -> Output:
        return Output(i=input_data.i)
