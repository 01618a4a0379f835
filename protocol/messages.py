"""The messages of the protocol, one frozen dataclass each.

Every message is a msgpack map whose ``type`` key names it; the other keys are
the dataclass fields, under the same names. ``ToChild`` messages flow from the
supervisor to the child, ``ToSupervisor`` messages the other way. ``encode`` and
``decode`` convert between messages and msgpack payloads; they check shapes
(types of fields, required keys) but not ordering, which is the state
machine's job (``states.py``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import msgpack

from .blobs import BlobReader, BlobWriter, externalize, no_arena_hook
from .error_info import ErrorInfo
from .errors import RemoteProtocolError

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Message:
    """Base of every protocol message; ``TYPE`` is its name on the wire (PROTOCOL.md)."""

    TYPE: ClassVar[str] = ""
    TO_CHILD: ClassVar[bool] = False
    BOTH_WAYS: ClassVar[bool] = False
    PAYLOAD: ClassVar[str | None] = None
    """The field holding app data, whose long byte strings may travel as blobs."""


# -- supervisor to child ------------------------------------------------------


@dataclass(frozen=True)
class Load(Message):
    """Load an app into a child that was started without one (a pooled child)."""

    TYPE: ClassVar[str] = "load"
    TO_CHILD: ClassVar[bool] = True
    id: str
    app_dir: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    """When not empty, the child's whole environment is replaced by it before the
    app is imported (a pre-started child becomes what a fresh one would be)."""
    describe: bool = True
    """Whether the result carries the app description. A restart already has it,
    and working out the JSON schemas is most of an empty app's load."""


@dataclass(frozen=True)
class Setup(Message):
    """Set the app up with a configuration (``App.setup``)."""

    TYPE: ClassVar[str] = "setup"
    TO_CHILD: ClassVar[bool] = True
    PAYLOAD: ClassVar[str | None] = "config"
    id: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Run(Message):
    """Call one of the app's functions with an input."""

    TYPE: ClassVar[str] = "run"
    TO_CHILD: ClassVar[bool] = True
    PAYLOAD: ClassVar[str | None] = "input"
    id: str
    function: str
    input: dict[str, Any]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Check(Message):
    """Validate setup values against the loaded app's setup model, changing nothing:
    a supervisor asks the child it has before replacing it with one set up anew."""

    TYPE: ClassVar[str] = "check"
    TO_CHILD: ClassVar[bool] = True
    PAYLOAD: ClassVar[str | None] = "config"
    id: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Cancel(Message):
    """Cancel a running request."""

    TYPE: ClassVar[str] = "cancel"
    TO_CHILD: ClassVar[bool] = True
    id: str


@dataclass(frozen=True)
class Unload(Message):
    """Unload the app (``App.unload``), answer ``unloaded`` and exit."""

    TYPE: ClassVar[str] = "unload"
    TO_CHILD: ClassVar[bool] = True


@dataclass(frozen=True)
class Shutdown(Message):
    """Exit: the supervisor is done with this child."""

    TYPE: ClassVar[str] = "shutdown"
    TO_CHILD: ClassVar[bool] = True


@dataclass(frozen=True)
class Ping(Message):
    """A heartbeat; the child answers ``pong`` with the same ``seq``."""

    TYPE: ClassVar[str] = "ping"
    TO_CHILD: ClassVar[bool] = True
    seq: int


# -- child to supervisor ------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    """The child's first message: who it is and what it can do."""

    TYPE: ClassVar[str] = "hello"
    protocol_version: int
    pid: int
    runtime_version: str
    app: dict[str, Any] | None = None
    """The app description (see PROTOCOL.md), or None for a child with no app yet."""
    shared_memory: bool = False
    """The child mapped the arenas it was given and may send and receive blobs."""
    features: list[str] = dataclasses.field(default_factory=list)
    """Optional messages the child understands (``check``); a supervisor sends
    none that the child did not list."""


@dataclass(frozen=True)
class Log(Message):
    """A line the app printed or logged, with the request it belongs to."""

    TYPE: ClassVar[str] = "log"
    id: str | None
    stream: str
    message: str


@dataclass(frozen=True)
class Progress(Message):
    """A request's progress report."""

    TYPE: ClassVar[str] = "progress"
    id: str
    fraction: float | None = None
    current: float | None = None
    total: float | None = None
    message: str | None = None


@dataclass(frozen=True)
class Partial(Message):
    """One yield of a generator function."""

    TYPE: ClassVar[str] = "partial"
    PAYLOAD: ClassVar[str | None] = "output"
    id: str
    output: Any


@dataclass(frozen=True)
class Result(Message):
    """A request's output: the end of a request that succeeded."""

    TYPE: ClassVar[str] = "result"
    PAYLOAD: ClassVar[str | None] = "output"
    id: str
    output: Any = None


@dataclass(frozen=True)
class Error(Message):
    """The end of a request that failed, or (``id`` None) a failure of the child."""

    TYPE: ClassVar[str] = "error"
    id: str | None
    error: ErrorInfo


@dataclass(frozen=True)
class Unloaded(Message):
    """The answer to ``unload``."""

    TYPE: ClassVar[str] = "unloaded"


@dataclass(frozen=True)
class Pong(Message):
    """The answer to ``ping``."""

    TYPE: ClassVar[str] = "pong"
    seq: int


# -- either way ----------------------------------------------------------------


@dataclass(frozen=True)
class Release(Message):
    """The sender of this message has read every blob of its peer's arena that
    ends at or before ``upto``; that space may be written again."""

    TYPE: ClassVar[str] = "release"
    BOTH_WAYS: ClassVar[bool] = True
    upto: int


ToChild = Load | Setup | Run | Check | Cancel | Unload | Shutdown | Ping | Release
ToSupervisor = Hello | Log | Progress | Partial | Result | Error | Unloaded | Pong | Release
REQUESTS = (Load, Setup, Run, Check)
"""Messages that open a request: each gets exactly one terminal Result or Error."""

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        *(Load, Setup, Run, Check, Cancel, Unload, Shutdown, Ping),
        *(Hello, Log, Progress, Partial, Result, Error, Unloaded, Pong),
        Release,
    )
}


# -- codec --------------------------------------------------------------------


def encode(message: Message, blobs: BlobWriter | None = None) -> bytes:
    """The msgpack payload of ``message``; with ``blobs``, the long byte strings
    of its payload field are copied into that arena and referenced."""
    wire: dict[str, Any] = {"type": message.TYPE}
    for f in _fields(type(message)):
        value = getattr(message, f.name)
        wire[f.name] = value.to_wire() if f.error_info else value
    try:
        if blobs is not None and message.PAYLOAD is not None:
            wire[message.PAYLOAD] = externalize(wire[message.PAYLOAD], blobs)
        return msgpack.packb(wire, use_bin_type=True)
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
        # Too deep or too large is the data's fault, like a type msgpack cannot carry.
        raise TypeError(f"cannot encode {message.TYPE} message: {exc!r}") from exc


def decode(payload: bytes | bytearray, blobs: BlobReader | None = None) -> Message:
    """The message in ``payload``; blob references are resolved from ``blobs``."""
    hook = no_arena_hook if blobs is None else blobs.ext_hook
    try:
        wire = msgpack.unpackb(payload, raw=False, use_list=True, ext_hook=hook)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated classes
        raise RemoteProtocolError(f"payload is not valid msgpack: {exc}") from exc
    if not isinstance(wire, dict):
        raise RemoteProtocolError(f"message must be a map, got {type(wire).__name__}")
    name = wire.get("type")
    cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {name!r}")
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        value = wire.get(f.name, _ABSENT)
        if value is _ABSENT:
            if f.required:
                raise RemoteProtocolError(f"{name} message lacks field {f.name!r}")
            continue
        if f.error_info:
            value = ErrorInfo.from_wire(value)
        elif f.accepts is not None and (
            not isinstance(value, f.accepts) or ((value is True or value is False) and not f.bools)
        ):
            raise RemoteProtocolError(
                f"{cls.TYPE}.{f.name} must be {' or '.join(t.__name__ for t in f.accepts)}, "
                f"got {type(value).__name__}"
            )
        kwargs[f.name] = value
    return cls(**kwargs)


def prepare() -> None:
    """Work out every message class's fields now rather than on first use, which
    costs about 0.1 ms per class; a pre-started child calls this before it is needed."""
    for cls in MESSAGE_TYPES.values():
        _fields(cls)


_ABSENT: Any = object()


@dataclasses.dataclass(frozen=True)
class _Field:
    """What the codec needs to know of one field, worked out once per class."""

    name: str
    required: bool
    accepts: tuple[type, ...] | None
    """The runtime types the field admits; None means anything."""
    bools: bool
    """Whether ``bool`` is admitted (msgpack's booleans are ints to ``isinstance``)."""
    error_info: bool


_FIELDS: dict[type[Message], tuple[_Field, ...]] = {}


def _fields(cls: type[Message]) -> tuple[_Field, ...]:
    found = _FIELDS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = _FIELDS[cls] = tuple(
            _field(f, _accepted_types(hints[f.name])) for f in dataclasses.fields(cls)
        )
    return found


def _field(f: dataclasses.Field[Any], accepts: tuple[type, ...] | None) -> _Field:
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    error_info = accepts is not None and ErrorInfo in accepts
    return _Field(f.name, required, accepts, accepts is None or bool in accepts, error_info)


def _accepted_types(annotation: Any) -> tuple[type, ...] | None:
    """The runtime types an annotation admits; None means anything."""
    if annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        accepted: tuple[type, ...] = ()
        for arg in typing.get_args(annotation):
            sub = _accepted_types(arg)
            if sub is None:
                return None
            accepted += sub
        return accepted
    if annotation is float:
        return (float, int)
    if annotation is type(None):
        return (type(None),)
    return (origin or annotation,)
