"""Simulates GPU and host memory use, for the memory-pressure tests.

VRAM is simulated through the fake NVML file named by SUPERVISOR_FAKE_NVML: the
app records its own pid there with the MiB it "holds" on each GPU it was given
(CUDA_VISIBLE_DEVICES holds host indices, as NVML reports them). Host memory is
real: ``hold_mib`` allocates and keeps a bytearray.
"""

import asyncio
import fcntl
import json
import os

from pydantic import BaseModel


class AppSetup(BaseModel):
    vram_mib: int = 0
    unload_seconds: float = 0.0


class RunInput(BaseModel):
    vram_mib: int | None = None
    hold_mib: int = 0
    sleep: float = 0.0
    cuda_oom: bool = False


class RunOutput(BaseModel):
    pid: int
    gpus: str


def record_vram(mib: int) -> None:
    path = os.environ["SUPERVISOR_FAKE_NVML"]
    gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(path) as f:
            doc = json.load(f)
        doc.setdefault("processes", {})[str(os.getpid())] = {g: mib for g in gpus}
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError."""


class App:
    async def setup(self, config: AppSetup) -> None:
        self.held = b""
        self.unload_seconds = config.unload_seconds
        if config.vram_mib:
            record_vram(config.vram_mib)

    async def run(self, data: RunInput) -> RunOutput:
        if data.vram_mib is not None:
            record_vram(data.vram_mib)
        if data.hold_mib:
            self.held = bytearray(data.hold_mib * 1024 * 1024)
            for i in range(0, len(self.held), 4096):
                self.held[i] = 1
        if data.cuda_oom:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if data.sleep:
            await asyncio.sleep(data.sleep)
        return RunOutput(pid=os.getpid(), gpus=os.environ.get("CUDA_VISIBLE_DEVICES", ""))

    async def unload(self) -> None:
        await asyncio.sleep(self.unload_seconds)
