"""Reports which GPUs the child was pinned to (its CUDA_VISIBLE_DEVICES) and its pid."""

import os

from pydantic import BaseModel


class Empty(BaseModel):
    pass


class Pinning(BaseModel):
    cuda_visible_devices: str | None
    pid: int


class App:
    def run(self, data: Empty) -> Pinning:
        return Pinning(cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), pid=os.getpid())
