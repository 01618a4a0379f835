"""An app that talks while it is imported and set up: a print, a log line, progress."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

print("importing setup_talks")


class Input(BaseModel):
    text: str = ""


class Output(BaseModel):
    text: str


class App:
    def setup(self, config: Any, metadata: Any) -> None:
        print("loading weights")
        logging.getLogger("setup_talks").warning("a logged line from setup")
        for step in range(1, 5):
            metadata.progress(step / 4, f"shard {step}/4")

    def run(self, input_data: Input) -> Output:
        return Output(text=input_data.text)
