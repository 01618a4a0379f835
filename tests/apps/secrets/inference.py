"""Reports which secrets it was given; prints and raises the key to test masking."""

import os
import sys

from pydantic import BaseModel

_MARKER = os.environ.get("SECRETS_APP_IMPORTED")
if _MARKER:  # lets a test see whether a child ever got this far
    with open(_MARKER, "w") as marker:
        marker.write("imported")


class Input(BaseModel):
    leak: bool = False


class Output(BaseModel):
    key_length: int
    present: list[str]


class App:
    def run(self, input_data: Input) -> Output:
        key = os.environ["SERVICE_API_KEY"]
        if input_data.leak:
            print(f"using key {key}")
            print(f"stderr key {key}", file=sys.stderr)
            raise RuntimeError(f"the service refused key {key}")
        names = ("SERVICE_API_KEY", "OPTIONAL_TUNING", "STORAGE_TOKEN", "UNDECLARED_SECRET")
        return Output(key_length=len(key), present=[n for n in names if n in os.environ])
