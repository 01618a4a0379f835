"""An app that leaves a file beside itself when it is imported (tests copy it first)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

(Path(__file__).parent / "imported").write_text("yes")


class Input(BaseModel):
    text: str = ""


class Output(BaseModel):
    text: str


class App:
    def run(self, input_data: Input) -> Output:
        return Output(text=input_data.text)
