"""Reports what the process looks like from inside, for the pool's tests."""

import os
import sys

from pydantic import BaseModel


class Empty(BaseModel):
    pass


class Snapshot(BaseModel):
    pid: int
    environ: dict[str, str]
    cwd: str
    path0: str
    app_packages: list[str]
    modules: list[str]


class App:
    async def run(self, data: Empty) -> Snapshot:
        return Snapshot(
            pid=os.getpid(),
            environ=dict(os.environ),
            cwd=os.getcwd(),
            path0=sys.path[0],
            app_packages=sorted(m for m in sys.modules if m.startswith("_app_") and "." not in m),
            modules=sorted(sys.modules),
        )
