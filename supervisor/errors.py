"""The exceptions a caller of the supervisor sees: one class per cause.

Every class carries what a caller needs to act (the field errors of a bad
input, the child's traceback, the exit status of a crash) and converts to a
JSON-ready dict with ``to_dict`` for the HTTP layer. Each class also says, once,
how it reaches the other faces: ``http_status`` (the server's answer) and
``exit_code`` (the command line's), as h11's errors carry their status hint;
the README's tables are checked against them. ``from_error_info`` maps a
structured error from the child onto its class.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

from protocol import ErrorInfo, ErrorType


class ExitCode(enum.IntEnum):
    """Exit statuses of ``run`` and ``schema`` (and of ``serve`` when it cannot start)."""

    OK = 0
    USAGE = 2
    """Bad command line: unknown option, unreadable or malformed JSON, not a directory."""
    BAD_INPUT = 3
    """The input or setup did not validate, or the function does not exist."""
    APP_ERROR = 4
    """The app raised, or its setup or import failed."""
    RUNTIME = 5
    """The child crashed, timed out, ran out of memory, or another runtime failure."""
    INTERRUPTED = 130
    """Ctrl-C (SIGINT) during ``run``."""


class SupervisorError(Exception):
    """Base of every error raised by the supervisor's API."""

    type: ClassVar[str] = "supervisor_error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[ExitCode] = ExitCode.RUNTIME

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, **self.details}


class InputValidationError(SupervisorError):
    """The input (or the setup config) did not validate; ``errors`` names the fields."""

    type = "validation"
    http_status = 422
    exit_code = ExitCode.BAD_INPUT

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.details.get("errors", []))


class UnknownFunctionError(SupervisorError):
    type = "unknown_function"
    http_status = 422
    exit_code = ExitCode.BAD_INPUT


class AppExceptionError(SupervisorError):
    """The app raised; ``exception`` and ``traceback`` come from the child."""

    type = "app_exception"
    http_status = 500
    exit_code = ExitCode.APP_ERROR

    @property
    def traceback(self) -> str | None:
        return self.details.get("traceback")


class OutOfMemoryError(AppExceptionError):
    """The app ran out of accelerator memory; its child is restarted for a fresh context."""

    type = "out_of_memory"
    http_status = 503
    exit_code = ExitCode.RUNTIME


class SetupFailedError(SupervisorError):
    """``setup()`` raised, or the child could not be set up in time."""

    type = "setup_failed"
    http_status = 500
    exit_code = ExitCode.APP_ERROR


class LoadFailedError(SetupFailedError):
    """The app directory could not be imported; retrying will not help."""

    type = "load_failed"


class ChildCrashedError(SupervisorError):
    """The child died while handling the request.

    ``exit_code`` or ``signal`` says how; ``oom_killed`` is true when the
    kernel's OOM killer is known to have done it.
    """

    type = "child_crashed"
    http_status = 503
    exit_code = ExitCode.RUNTIME


class BudgetExceededError(ChildCrashedError):
    """The child was stopped for using more VRAM or RAM than its budget."""

    type = "budget_exceeded"


class EvictedError(ChildCrashedError):
    """The child was stopped to free GPU memory for others."""

    type = "evicted"


class RequestTimeoutError(SupervisorError):
    type = "timeout"
    http_status = 504
    exit_code = ExitCode.RUNTIME


class RequestCancelledError(SupervisorError):
    type = "cancelled"
    http_status = 409
    exit_code = ExitCode.RUNTIME


class AppFailedError(SupervisorError):
    """The app crashed too often and the supervisor gave up restarting it."""

    type = "app_failed"
    http_status = 503
    exit_code = ExitCode.RUNTIME


class AppStoppedError(SupervisorError):
    """The app was stopped (or is stopping) and takes no more requests."""

    type = "app_stopped"
    http_status = 503
    exit_code = ExitCode.RUNTIME


class BusyError(SupervisorError):
    """The app's queue is full."""

    type = "busy"
    http_status = 429
    exit_code = ExitCode.RUNTIME


class AdmissionError(SupervisorError):
    """No GPU has (or could be made to have) the memory the app declared."""

    type = "admission"
    http_status = 503
    exit_code = ExitCode.RUNTIME


class MissingSecretError(SupervisorError):
    """A secret the app declares as required was not given; ``missing`` lists
    each key with its description. Raised before any child starts."""

    type = "missing_secret"
    http_status = 500
    exit_code = ExitCode.USAGE


class EnvironmentFailedError(SetupFailedError):
    """The app's environment could not be made: its runtime (Python or Node.js) is
    missing or too old, or installing its dependencies failed: ``requirement`` is
    the one the installer failed on (when it can be told), ``installer_output`` its
    last lines."""

    type = "environment_failed"


class InterpreterMissingError(EnvironmentFailedError):
    """No interpreter of the Python version the app's ``kernel:`` names was found."""

    type = "interpreter_missing"


class MissingSystemPackagesError(EnvironmentFailedError):
    """With ``strict``: system packages the app lists in ``packages.txt`` are not
    installed (``missing``)."""

    type = "missing_system_packages"


class ProtocolViolationError(SupervisorError):
    """The child broke the protocol; it has been killed."""

    type = "protocol"
    http_status = 502
    exit_code = ExitCode.RUNTIME


class InternalError(SupervisorError):
    """A bug in the supervisor failed this request (and only this one); it is logged."""

    type = "internal"
    http_status = 500
    exit_code = ExitCode.RUNTIME


_BY_TYPE: dict[ErrorType, type[SupervisorError]] = {
    ErrorType.VALIDATION: InputValidationError,
    ErrorType.SETUP_FAILED: SetupFailedError,
    ErrorType.LOAD_FAILED: LoadFailedError,
    ErrorType.APP_EXCEPTION: AppExceptionError,
    ErrorType.OUT_OF_MEMORY: OutOfMemoryError,
    ErrorType.UNKNOWN_FUNCTION: UnknownFunctionError,
    ErrorType.CANCELLED: RequestCancelledError,
    ErrorType.PROTOCOL: ProtocolViolationError,
}


def from_error_info(info: ErrorInfo) -> SupervisorError:
    details: dict[str, Any] = {}
    if info.exception:
        details["exception"] = info.exception
    if info.traceback:
        details["traceback"] = info.traceback
    if info.errors:
        details["errors"] = [e.to_wire() for e in info.errors]
    return _BY_TYPE[info.type](info.message, **details)
