"""Reports the interpreter and package versions it runs with.

Copied into temporary app directories by the environment tests, each with its
own requirements; the SDK's types are used when the environment has the SDK.
"""

import sys
from importlib import metadata

try:
    from inferencesh import BaseApp, BaseAppInput, BaseAppOutput
except ImportError:  # the runtime's stand-in serves then
    from pydantic import BaseModel as BaseApp
    from pydantic import BaseModel as BaseAppInput
    from pydantic import BaseModel as BaseAppOutput

PACKAGES = ("six", "pydantic", "anyio", "msgpack", "inferencesh")


class RunInput(BaseAppInput):
    text: str = ""


class RunOutput(BaseAppOutput):
    python: str
    prefix: str
    versions: dict[str, str | None]
    text: str


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


class App(BaseApp):
    async def setup(self):
        pass

    async def run(self, input_data: RunInput) -> RunOutput:
        return RunOutput(
            python=".".join(map(str, sys.version_info[:3])),
            prefix=sys.prefix,
            versions={name: _version(name) for name in PACKAGES},
            text=input_data.text.upper(),
        )
