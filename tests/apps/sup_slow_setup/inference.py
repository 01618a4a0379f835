"""A plain app whose setup sleeps (``seconds`` from the setup config, default 30), or
waits until the file named ``gate`` exists (then ``seconds`` is its limit): a test
opens the gate once it has seen what happens during setup."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class Input(BaseModel):
    text: str = ""


class Output(BaseModel):
    text: str


class App:
    def setup(self, config: Any) -> None:
        seconds = float(config.get("seconds", 30))
        gate = config.get("gate")
        if gate is None:
            time.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def run(self, input_data: Input) -> Output:
        return Output(text=input_data.text)
