"""First-use costs a pre-started child pays before its hello, not during a start.

The first JSON schema pydantic generates in a process and the first metadata
class built on a base cost about 1 ms more than later ones (pydantic sets up its
schema generator, and builds a model class); the codec works out each message
class's fields on first use. A pooled child has time to spare
before any app is asked for, so it pays them then; a load, setup and first run
taken from the pool skip them. Nothing here is visible to the app: a private
model is discarded, and the metadata class only fills the cache that setup
would fill.
"""

from __future__ import annotations

import pydantic

from protocol import messages

from .metadata import metadata_base, metadata_class


class _Sample(pydantic.BaseModel):
    text: str = ""
    values: list[float] = []
    nested: dict[str, int] | None = None


def prewarm() -> None:
    messages.prepare()
    _Sample.model_json_schema()
    _Sample.model_validate({"text": "x", "values": [1.0]}).model_dump()
    metadata_class(metadata_base())
