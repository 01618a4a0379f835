"""An app that writes garbage straight into the child's protocol channel.

It cannot reach it through fd 1 (the runtime took that away), so it goes looking
for the runtime's private descriptor: the worst an app can do to the protocol.
"""

import gc
import os

from pydantic import BaseModel


class In(BaseModel):
    corrupt: bool = False


class Out(BaseModel):
    pid: int


class App:
    async def run(self, data: In) -> Out:
        if data.corrupt:
            outbox = next(o for o in gc.get_objects() if type(o).__name__ == "Outbox")
            os.write(outbox._fd, b"\x00\x00\x00\x05not msgpack at all")
        return Out(pid=os.getpid())
