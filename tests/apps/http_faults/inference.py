"""An app for the HTTP tests: functions that echo, raise, sleep, crash and deal in Files."""

import asyncio
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, File
from pydantic import Field


class EchoInput(BaseAppInput):
    text: str = ""


class EchoOutput(BaseAppOutput):
    text: str
    pid: int


class SleepInput(BaseAppInput):
    seconds: float = Field(ge=0, le=60)


class SleepOutput(BaseAppOutput):
    slept: float


class MakeFileInput(BaseAppInput):
    content: str
    name: str = "made.txt"


class MakeFileOutput(BaseAppOutput):
    file: File
    files: list[File] = []


class ReadFileInput(BaseAppInput):
    file: File
    extra: File | None = None


class ReadFileOutput(BaseAppOutput):
    size: int
    sha256: str
    content_type: str | None = None
    extra_size: int | None = None


class App(BaseApp):
    async def setup(self):
        self.out_dir = Path(tempfile.mkdtemp(prefix="appvisor-http-faults-"))

    async def run(self, input_data: EchoInput) -> EchoOutput:
        """Echo the text, with the child's pid (and print it, which must not reach stdout)."""
        print(f"echo to stdout: {input_data.text}")
        print(f"echo to stderr: {input_data.text}", file=sys.stderr)
        return EchoOutput(text=input_data.text, pid=os.getpid())

    async def boom(self, input_data: EchoInput) -> EchoOutput:
        """Raise an exception."""
        raise RuntimeError(f"boom: {input_data.text}")

    async def sleep(self, input_data: SleepInput) -> SleepOutput:
        """Sleep, cooperatively."""
        await asyncio.sleep(input_data.seconds)
        return SleepOutput(slept=input_data.seconds)

    def crash(self, input_data: EchoInput) -> EchoOutput:
        """Exit the process at once, as a segfault or a native abort would."""
        os._exit(3)

    def make_file(self, input_data: MakeFileInput) -> MakeFileOutput:
        """Write a file and return it (twice: alone and in a list)."""
        target = self.out_dir / input_data.name
        target.write_text(input_data.content)
        return MakeFileOutput(file=File(path=str(target)), files=[File(path=str(target))])

    def read_file(self, input_data: ReadFileInput) -> ReadFileOutput:
        """Hash a file input."""
        data = Path(input_data.file.path).read_bytes()
        extra = input_data.extra
        return ReadFileOutput(
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type=input_data.file.content_type,
            extra_size=Path(extra.path).stat().st_size if extra is not None else None,
        )
