"""An app with big payloads, for the child's throughput and back-pressure tests."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import AsyncGenerator

from pydantic import BaseModel


class BlobInput(BaseModel):
    size: int
    seed: int = 0


class BlobOutput(BaseModel):
    data: bytes
    size: int
    sha256: str


class DigestInput(BaseModel):
    data: bytes


class DigestOutput(BaseModel):
    size: int
    sha256: str


class FloodInput(BaseModel):
    total: int
    """Bytes to write, newlines included."""
    line: int = 1023
    """Characters per line, newline excluded."""


class FloodOutput(BaseModel):
    lines: int
    chars: int
    """Characters written, newlines excluded."""
    total_bytes: int
    """Bytes written, newlines included."""


class EchoData(BaseModel):
    data: bytes
    parts: list[bytes] = []


class ChunksInput(BaseModel):
    count: int
    size: int


class LongLinesInput(BaseModel):
    print_chars: int
    fd_chars: int


class LongLinesOutput(BaseModel):
    done: bool


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def flood_line(index: int, width: int) -> str:
    """Line ``index`` of a flood: its number, then filler up to ``width`` characters."""
    head = f"{index:08d}:"
    return head + "x" * max(0, width - len(head))


class App:
    def setup(self):
        pass

    def blob(self, input: BlobInput) -> BlobOutput:
        """``size`` pseudo-random bytes (seeded), with their SHA-256."""
        data = blob(input.size, input.seed)
        return BlobOutput(data=data, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def digest(self, input: DigestInput) -> DigestOutput:
        """The size and SHA-256 of the bytes it was sent."""
        return DigestOutput(size=len(input.data), sha256=hashlib.sha256(input.data).hexdigest())

    async def echo(self, input: EchoData) -> EchoData:
        """The same bytes back (async, so that calls may overlap)."""
        return input

    async def chunks(self, input: ChunksInput) -> AsyncGenerator[BlobOutput, None]:
        """``count`` partial outputs of ``size`` seeded bytes each (seeds 0, 1, ...)."""
        for seed in range(input.count):
            data = blob(input.size, seed)
            yield BlobOutput(data=data, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def flood(self, input: FloodInput) -> FloodOutput:
        """Write ``total`` bytes of lines, alternating print and os.write(1)."""
        written = chars = lines = 0
        while written < input.total:
            line = flood_line(lines, input.line)
            if lines % 2:
                os.write(1, line.encode() + b"\n")
            else:
                print(line)
            lines += 1
            chars += len(line)
            written += len(line) + 1
        return FloodOutput(lines=lines, chars=chars, total_bytes=written)

    def long_lines(self, input: LongLinesInput) -> LongLinesOutput:
        """One long line of "p" through print, one of "f" through fd 1."""
        print("p" * input.print_chars)
        os.write(1, b"f" * input.fd_chars + b"\n")
        return LongLinesOutput(done=True)
