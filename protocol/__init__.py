"""The wire protocol between the supervisor and an app's child process.

Framed msgpack over the child's stdin and stdout; see ``PROTOCOL.md`` beside this
file for the full specification. The package is pure: it performs no I/O and
imports neither ``os`` nor an event loop, except the thin adapters in
``streams.py`` (pipes) and ``shared_memory.py`` (the arenas' memory).

The names below are imported when first used: a process that needs one module
(``shared_memory`` for ``serve``'s head start) does not pay for the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .blobs import BlobReader, BlobWriter
    from .connection import EOF, NEED_DATA, Connection, Role, Sentinel
    from .error_info import ErrorInfo, ErrorType, FieldError, is_cuda_oom
    from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
    from .framing import (
        DEFAULT_MAX_FRAME_SIZE,
        DEFAULT_MAX_MESSAGE_SIZE,
        FrameDecoder,
        encode_frames,
    )
    from .messages import (
        PROTOCOL_VERSION,
        Cancel,
        Check,
        Error,
        Hello,
        Load,
        Log,
        Message,
        Partial,
        Ping,
        Pong,
        Progress,
        Release,
        Result,
        Run,
        Setup,
        Shutdown,
        ToChild,
        ToSupervisor,
        Unload,
        Unloaded,
        decode,
        encode,
    )
    from .states import State

_EXPORTS = {
    "BlobReader": ".blobs",
    "BlobWriter": ".blobs",
    "Cancel": ".messages",
    "Check": ".messages",
    "Connection": ".connection",
    "decode": ".messages",
    "DEFAULT_MAX_FRAME_SIZE": ".framing",
    "DEFAULT_MAX_MESSAGE_SIZE": ".framing",
    "encode": ".messages",
    "encode_frames": ".framing",
    "EOF": ".connection",
    "Error": ".messages",
    "ErrorInfo": ".error_info",
    "ErrorType": ".error_info",
    "FieldError": ".error_info",
    "FrameDecoder": ".framing",
    "Hello": ".messages",
    "is_cuda_oom": ".error_info",
    "Load": ".messages",
    "LocalProtocolError": ".errors",
    "Log": ".messages",
    "Message": ".messages",
    "NEED_DATA": ".connection",
    "Partial": ".messages",
    "Ping": ".messages",
    "Pong": ".messages",
    "Progress": ".messages",
    "PROTOCOL_VERSION": ".messages",
    "ProtocolError": ".errors",
    "Release": ".messages",
    "RemoteProtocolError": ".errors",
    "Result": ".messages",
    "Role": ".connection",
    "Run": ".messages",
    "Sentinel": ".connection",
    "Setup": ".messages",
    "Shutdown": ".messages",
    "State": ".states",
    "ToChild": ".messages",
    "ToSupervisor": ".messages",
    "Unload": ".messages",
    "Unloaded": ".messages",
}

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "EOF",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "BlobReader",
    "BlobWriter",
    "Cancel",
    "Check",
    "Connection",
    "Error",
    "ErrorInfo",
    "ErrorType",
    "FieldError",
    "FrameDecoder",
    "Hello",
    "Load",
    "LocalProtocolError",
    "Log",
    "Message",
    "Partial",
    "Ping",
    "Pong",
    "Progress",
    "ProtocolError",
    "Release",
    "RemoteProtocolError",
    "Result",
    "Role",
    "Run",
    "Sentinel",
    "Setup",
    "Shutdown",
    "State",
    "ToChild",
    "ToSupervisor",
    "Unload",
    "Unloaded",
    "decode",
    "encode",
    "encode_frames",
    "is_cuda_oom",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
