"""Outputs as JSON, for HTTP responses and the command line alike.

A child's output may hold byte strings (msgpack ``bin``); JSON has none, so they
become base64 strings, the same way wherever the runtime prints an output.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def dumps(value: Any) -> str:
    """``value`` as JSON text, with bytes as base64 strings."""
    return _ENCODER.encode(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False)
"""What ``json.dumps`` would build for these options at every call."""
