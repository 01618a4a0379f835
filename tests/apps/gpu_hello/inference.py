"""A greeting app that declares one GPU and 4 GiB of VRAM (for the status page's bars)."""

from __future__ import annotations

from pydantic import BaseModel

print("gpu_hello imported")


class Input(BaseModel):
    name: str = "GPU"


class Output(BaseModel):
    greeting: str


class App:
    def run(self, input_data: Input) -> Output:
        return Output(greeting=f"Hello, {input_data.name}!")
