"""Benchmark app: the smallest possible app. No SDK import, a no-op async ``run``."""

from pydantic import BaseModel


class Input(BaseModel):
    x: int = 0


class Output(BaseModel):
    x: int


class App:
    async def setup(self) -> None:
        pass

    async def run(self, input_data: Input) -> Output:
        return Output(x=input_data.x)
