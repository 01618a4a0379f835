"""The structured error that ends a request.

Errors cross the wire as maps with a stable ``type`` (see ``ErrorType``) so that
the receiving side can raise one exception class per cause without parsing
messages. ``to_wire``/``from_wire`` are the only (de)serialisers.
``is_cuda_oom`` is the one test of whether an app's exception was the GPU
running out of memory (``OUT_OF_MEMORY``), for the child that reports it and
for any policy that reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import RemoteProtocolError


class ErrorType(str, Enum):
    VALIDATION = "validation"
    """The input (or setup config) did not validate; ``errors`` lists the fields."""
    SETUP_FAILED = "setup_failed"
    """``setup()`` raised; the app is not usable with this config."""
    LOAD_FAILED = "load_failed"
    """The app directory could not be imported or has no ``App``."""
    APP_EXCEPTION = "app_exception"
    """The function raised while running."""
    OUT_OF_MEMORY = "out_of_memory"
    """The function ran out of accelerator memory (e.g. CUDA OOM)."""
    UNKNOWN_FUNCTION = "unknown_function"
    """The request named a function the app does not have."""
    CANCELLED = "cancelled"
    """The request was cancelled before it finished."""
    PROTOCOL = "protocol"
    """A message broke the protocol; the sender of this error is about to exit."""


@dataclass(frozen=True)
class FieldError:
    """One failed field, as pydantic reports it."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    def to_wire(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


@dataclass(frozen=True)
class ErrorInfo:
    """An error as it travels on the wire (``error`` messages), and as callers see it."""

    type: ErrorType
    message: str
    exception: str | None = None
    """Qualified class name of the exception that caused it, if any."""
    traceback: str | None = None
    errors: tuple[FieldError, ...] = field(default_factory=tuple)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type.value, "message": self.message}
        if self.exception is not None:
            wire["exception"] = self.exception
        if self.traceback is not None:
            wire["traceback"] = self.traceback
        if self.errors:
            wire["errors"] = [e.to_wire() for e in self.errors]
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> ErrorInfo:
        if not isinstance(wire, dict):
            raise RemoteProtocolError(f"error must be a map, got {type(wire).__name__}")
        try:
            error_type = ErrorType(wire.get("type"))
        except ValueError:
            raise RemoteProtocolError(f"unknown error type {wire.get('type')!r}") from None
        message = wire.get("message")
        if not isinstance(message, str):
            raise RemoteProtocolError("error.message must be a string")
        raw_errors = wire.get("errors") or []
        if not isinstance(raw_errors, list):
            raise RemoteProtocolError("error.errors must be a list")
        errors = []
        for item in raw_errors:
            if not isinstance(item, dict):
                raise RemoteProtocolError("error.errors entries must be maps")
            loc = item.get("loc", ())
            errors.append(
                FieldError(
                    loc=tuple(loc) if isinstance(loc, (list, tuple)) else (str(loc),),
                    msg=str(item.get("msg", "")),
                    type=str(item.get("type", "")),
                )
            )
        return cls(
            type=error_type,
            message=message,
            exception=_optional_str(wire, "exception"),
            traceback=_optional_str(wire, "traceback"),
            errors=tuple(errors),
        )


def _optional_str(wire: dict[str, Any], key: str) -> str | None:
    value = wire.get(key)
    if value is None or isinstance(value, str):
        return value
    raise RemoteProtocolError(f"error.{key} must be a string")


_OOM_EXCEPTIONS = frozenset({"outofmemoryerror"})
"""Last component of the class name, lower case: ``torch.cuda.OutOfMemoryError``
and its alias ``torch.OutOfMemoryError``."""

_OOM_MESSAGE = re.compile(
    r"cuda(\s+error:)?\s+out of memory"
    r"|cudaerrormemoryallocation"
    r"|cublas_status_alloc_failed"
    r"|cudnn_status_alloc_failed",
    re.IGNORECASE,
)


def is_cuda_oom(exception_name: str | None, message: str) -> bool:
    """Whether an app's error was the GPU running out of memory.

    ``exception_name`` is the exception's class name, qualified or not (see
    ``ErrorInfo.exception``). Matching is case-insensitive; a plain host
    ``MemoryError`` is not a CUDA OOM.
    """
    if exception_name and exception_name.rsplit(".", 1)[-1].lower() in _OOM_EXCEPTIONS:
        return True
    return _OOM_MESSAGE.search(message) is not None
