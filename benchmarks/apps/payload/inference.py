"""Benchmark app: echoes ``data`` (raw bytes, carried as msgpack bin, never base64)."""

from pydantic import BaseModel


class Input(BaseModel):
    data: bytes


class Output(BaseModel):
    data: bytes


class App:
    async def setup(self) -> None:
        pass

    async def run(self, input_data: Input) -> Output:
        return Output(data=input_data.data)
