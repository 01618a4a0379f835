"""The wire protocol between the supervisor and an app's child process.

Framed msgpack over the child's stdin and stdout; see ``PROTOCOL.md`` beside this
file for the full specification. The package is pure: it performs no I/O and
imports neither ``os`` nor an event loop, except the thin adapters in
``streams.py`` (pipes) and ``shared_memory.py`` (the arenas' memory).
"""

from .blobs import BlobReader, BlobWriter
from .connection import EOF, NEED_DATA, Connection, Role, Sentinel
from .error_info import ErrorInfo, ErrorType, FieldError, is_cuda_oom
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE, FrameDecoder, encode_frames
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
