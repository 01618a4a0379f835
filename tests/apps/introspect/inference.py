"""Reports what the process looks like from inside, for the pool's tests."""

import gc
import os
import sys

from pydantic import BaseModel

COLLECTING_AT_IMPORT = gc.isenabled()


class Empty(BaseModel):
    pass


class Snapshot(BaseModel):
    pid: int
    environ: dict[str, str]
    cwd: str
    path0: str
    app_packages: list[str]
    modules: list[str]
    collecting: list[bool]
    """Whether the cyclic garbage collector ran when the app was imported, and now."""


class App:
    async def run(self, data: Empty) -> Snapshot:
        return Snapshot(
            pid=os.getpid(),
            environ=dict(os.environ),
            cwd=os.getcwd(),
            path0=sys.path[0],
            app_packages=sorted(m for m in sys.modules if m.startswith("_app_") and "." not in m),
            modules=sorted(sys.modules),
            collecting=[COLLECTING_AT_IMPORT, gc.isenabled()],
        )
