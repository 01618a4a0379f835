"""A plain app whose setup kills the process with ``os._exit(4)``.

With a ``once_marker`` path in the setup config, the first setup succeeds (and
creates the file) and every later one crashes. ``run`` answers, or exits with
code 3 when asked to (``{"how": "exit"}``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class Input(BaseModel):
    how: str = "ok"


class Output(BaseModel):
    pid: int


class App:
    def setup(self, config: Any) -> None:
        marker = config.get("once_marker")
        if marker and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            return
        os._exit(4)

    def run(self, input_data: Input) -> Output:
        if input_data.how == "exit":
            os._exit(3)
        return Output(pid=os.getpid())
