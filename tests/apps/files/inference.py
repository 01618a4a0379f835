"""An app that takes a File and returns a new File written into a temporary directory."""

import shutil
import tempfile
from pathlib import Path

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, File
from pydantic import Field


class AppInput(BaseAppInput):
    image: File = Field(description="Any file; its bytes are copied reversed")


class AppOutput(BaseAppOutput):
    result: File
    input_size: int
    input_content_type: str | None = None
    input_path: str


class App(BaseApp):
    async def setup(self):
        self.out_dir = Path(tempfile.mkdtemp(prefix="appvisor-files-app-"))

    def run(self, input_data: AppInput) -> AppOutput:
        """Copy the input's bytes reversed into a new file (a sync run)."""
        data = Path(input_data.image.path).read_bytes()
        target = self.out_dir / f"reversed-{Path(input_data.image.path).name}"
        target.write_bytes(data[::-1])
        return AppOutput(
            result=File(path=str(target)),
            input_size=len(data),
            input_content_type=input_data.image.content_type,
            input_path=input_data.image.path,
        )

    async def unload(self):
        shutil.rmtree(self.out_dir, ignore_errors=True)
