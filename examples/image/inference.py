"""An image app: a File in, a File out.

The input ``image`` may be a local path, an http(s) URL or a data: URI; the SDK's
``File`` fetches remote ones before ``run`` sees a local path. The output is
written into a directory the app owns and returned as a ``File``, which the
HTTP server turns into a download URL.
"""

import shutil
import tempfile
import uuid
from pathlib import Path

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, File
from PIL import Image, ImageOps
from pydantic import Field


class AppInput(BaseAppInput):
    image: File = Field(description="The image to convert (PNG, JPEG, ...)")
    size: int = Field(default=128, ge=1, le=4096, description="Longest side of the thumbnail")


class AppOutput(BaseAppOutput):
    image: File = Field(description="The grayscale thumbnail, as PNG")
    width: int
    height: int
    original_width: int
    original_height: int


class App(BaseApp):
    async def setup(self) -> None:
        self.out_dir = Path(tempfile.mkdtemp(prefix="appvisor-image-"))

    def run(self, input_data: AppInput) -> AppOutput:
        """Make a grayscale thumbnail of an image."""
        with Image.open(input_data.image.path) as original:
            original_size = original.size
            thumbnail = ImageOps.grayscale(ImageOps.exif_transpose(original))
        thumbnail.thumbnail((input_data.size, input_data.size))
        target = self.out_dir / f"thumbnail-{uuid.uuid4().hex[:8]}.png"
        thumbnail.save(target, format="PNG")
        return AppOutput(
            image=File(path=str(target)),
            width=thumbnail.width,
            height=thumbnail.height,
            original_width=original_size[0],
            original_height=original_size[1],
        )

    async def unload(self) -> None:
        shutil.rmtree(self.out_dir, ignore_errors=True)
