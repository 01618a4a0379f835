"""A plain app whose setup sleeps (``seconds`` from the setup config, default 30)."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel


class Input(BaseModel):
    text: str = ""


class Output(BaseModel):
    text: str


class App:
    def setup(self, config: Any) -> None:
        time.sleep(float(config.get("seconds", 30)))

    def run(self, input_data: Input) -> Output:
        return Output(text=input_data.text)
