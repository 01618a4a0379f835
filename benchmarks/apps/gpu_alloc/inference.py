"""Holds a real CUDA tensor of the requested size (for benchmarks/gpu_check.py)."""

import asyncio
import os

import torch
from pydantic import BaseModel


class RunInput(BaseModel):
    mib: int = 0
    hold_s: float = 0.0
    """Stay busy this long after allocating."""


class RunOutput(BaseModel):
    pid: int
    allocated_mib: int
    device_name: str
    cuda_visible_devices: str


class ProbeInput(BaseModel):
    pass


class ProbeOutput(BaseModel):
    pid: int
    cuda_initialized_before: bool
    cuda_available: bool
    device_count: int
    cuda_visible_devices: str


class App:
    async def setup(self) -> None:
        self.held: list[torch.Tensor] = []

    async def run(self, data: RunInput) -> RunOutput:
        if data.mib:
            self.held.append(torch.empty(data.mib * 1024 * 1024, dtype=torch.uint8, device="cuda"))
        torch.cuda.synchronize()
        await asyncio.sleep(data.hold_s)
        return RunOutput(
            pid=os.getpid(),
            allocated_mib=torch.cuda.memory_allocated() // (1024 * 1024),
            device_name=torch.cuda.get_device_name(0),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )

    async def probe(self, data: ProbeInput) -> ProbeOutput:
        """What this child's torch sees, without allocating anything."""
        initialized = torch.cuda.is_initialized()
        return ProbeOutput(
            pid=os.getpid(),
            cuda_initialized_before=initialized,
            cuda_available=torch.cuda.is_available(),
            device_count=torch.cuda.device_count(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )
