"""Reports when it was imported and set up, for the standby's tests.

Its import fails while the file named by ``STANDBY_REFUSE_IMPORT`` exists, and a
run with ``crash`` set exits at once.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

IMPORTED_AT = time.time()
if os.path.exists(os.environ.get("STANDBY_REFUSE_IMPORT", "/nonexistent")):
    raise RuntimeError("import refused")


class AppSetup(BaseModel):
    greeting: str = "hello"


class Input(BaseModel):
    crash: bool = False


class Output(BaseModel):
    pid: int
    greeting: str
    setups: int
    imported_at: float
    set_up_at: float


class App:
    setups = 0

    async def setup(self, config: AppSetup) -> None:
        type(self).setups += 1
        self.greeting = config.greeting
        self.set_up_at = time.time()

    async def run(self, input_data: Input) -> Output:
        if input_data.crash:
            os._exit(3)
        return Output(
            pid=os.getpid(),
            greeting=self.greeting,
            setups=self.setups,
            imported_at=IMPORTED_AT,
            set_up_at=self.set_up_at,
        )
