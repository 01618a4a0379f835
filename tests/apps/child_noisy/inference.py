"""An app that writes to every output channel, for the child's output-capture tests.

``make_noise`` writes one line through each path that output can take out of a
process: Python's ``sys.stdout``/``sys.stderr``, raw writes to fds 1 and 2, a
subprocess that inherited fd 1, and the logging module (whose last-resort handler
writes to ``sys.stderr``). Setup and every function make that noise; the marker
functions tag their lines so that concurrent requests can be told apart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

from pydantic import BaseModel

NOISE = (
    ("stdout", "py-out"),
    ("stderr", "py-err"),
    ("stdout", "fd-out"),
    ("stderr", "fd-err"),
    ("stdout", "sub-out"),
    ("stderr", "log-line"),
)
"""(stream, line) for each line ``make_noise`` writes, in order."""


def make_noise() -> None:
    print("py-out")
    print("py-err", file=sys.stderr)
    os.write(1, b"fd-out\n")
    os.write(2, b"fd-err\n")
    subprocess.run(["echo", "sub-out"], check=True)
    logging.getLogger().warning("log-line")


class NoiseInput(BaseModel):
    log: str | None = None
    progress: float | None = None


class NoiseOutput(BaseModel):
    done: bool


class MarkerInput(BaseModel):
    marker: str
    count: int = 5
    delay: float = 0.01


class MarkerOutput(BaseModel):
    marker: str


class App:
    def setup(self):
        make_noise()

    async def run(self, input: NoiseInput, metadata) -> NoiseOutput:
        """Noise from an async function, plus metadata.log/progress on request."""
        make_noise()
        if input.log is not None:
            metadata.log(input.log)
        if input.progress is not None:
            metadata.progress(input.progress, "half")
        return NoiseOutput(done=True)

    def noise_sync(self, input: NoiseInput, metadata) -> NoiseOutput:
        """The same from a sync function (a worker thread)."""
        make_noise()
        if input.log is not None:
            metadata.log(input.log)
        if input.progress is not None:
            metadata.progress(input.progress, "half")
        return NoiseOutput(done=True)

    async def marker(self, input: MarkerInput, metadata) -> MarkerOutput:
        """Print ``<marker> <i>`` count times, sleeping between lines."""
        for i in range(input.count):
            print(f"{input.marker} {i}")
            metadata.log(f"{input.marker} log {i}")
            await asyncio.sleep(input.delay)
        return MarkerOutput(marker=input.marker)

    def marker_sync(self, input: MarkerInput, metadata) -> MarkerOutput:
        """The same in a worker thread."""
        for i in range(input.count):
            print(f"{input.marker} {i}")
            metadata.log(f"{input.marker} log {i}")
            time.sleep(input.delay)
        return MarkerOutput(marker=input.marker)
