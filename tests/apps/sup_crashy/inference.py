"""A plain app that crashes on request: ``how`` picks the way it ends.

``ok`` answers; ``exit`` calls ``os._exit(3)``; ``segv`` reads address 0;
``hang`` and ``sleep`` block in a worker thread (so a cancel cannot interrupt
them); ``ignore_term_hang`` also ignores SIGTERM; ``spawn_grandchild`` starts
a long-lived grandchild and returns its pid. ``started`` names a file that
``run`` creates as it begins, so that a test can wait for it.
Every answer reports the child's pid, CUDA_VISIBLE_DEVICES, cwd and a few
environment variables, so tests can check what the child was given.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

WATCHED_ENV = (
    "FOO",
    "MY_SECRET",
    "FROM_YML",
    "SUPERVISOR_PARENT_PID",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
)


class Input(BaseModel):
    how: str = "ok"
    seconds: float = 0.0
    started: str = ""


class Output(BaseModel):
    pid: int
    cuda: str | None
    cwd: str
    env: dict[str, str | None]
    grandchild: int | None = None


class App:
    def setup(self) -> None:
        self.grandchildren: list[subprocess.Popen[bytes]] = []

    def run(self, input_data: Input) -> Output:
        how = input_data.how
        grandchild = None
        if input_data.started:
            Path(input_data.started).touch()
        if how == "exit":
            os._exit(3)
        elif how == "segv":
            ctypes.string_at(0)
        elif how == "hang":
            time.sleep(1000)
        elif how == "ignore_term_hang":
            libc = ctypes.CDLL(None)
            libc.signal.restype = ctypes.c_void_p
            libc.signal(signal.SIGTERM, ctypes.c_void_p(1))  # SIG_IGN, from a worker thread
            time.sleep(1000)
        elif how == "sleep":
            time.sleep(input_data.seconds)
        elif how == "spawn_grandchild":
            proc = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(1000)"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.grandchildren.append(proc)
            grandchild = proc.pid
        elif how != "ok":
            raise ValueError(f"unknown how: {how!r}")
        return Output(
            pid=os.getpid(),
            cuda=os.environ.get("CUDA_VISIBLE_DEVICES"),
            cwd=os.getcwd(),
            env={name: os.environ.get(name) for name in WATCHED_ENV},
            grandchild=grandchild,
        )
