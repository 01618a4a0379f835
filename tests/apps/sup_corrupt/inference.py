"""An app that writes garbage straight into the child's protocol channel.

It cannot reach it through fd 1 (the runtime took that away), so it goes looking
for the runtime's private descriptor (through ``sys.stdout``, the runtime's stream,
which sends to the runtime's outbox): the worst an app can do to the protocol.
"""

import os
import sys

from pydantic import BaseModel


class In(BaseModel):
    corrupt: bool = False


class Out(BaseModel):
    pid: int


class App:
    async def run(self, data: In) -> Out:
        if data.corrupt:
            outbox = sys.stdout._sink.__self__  # type: ignore[attr-defined]
            assert type(outbox).__name__ == "Outbox"
            os.write(outbox._fd, b"\x00\x00\x00\x05not msgpack at all")
        return Out(pid=os.getpid())
