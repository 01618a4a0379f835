"""The ``metadata`` object handed to an app's ``setup`` and functions.

It is an instance of the SDK's ``Metadata`` (so ``isinstance`` checks in apps hold)
extended with ``log`` and ``progress``, which the inference.sh docs show but the SDK
does not define. The callbacks live in private attributes, so they never appear in
``model_dump()`` or in the fields an app iterates over.

The base class is the ``Metadata`` of whatever ``inferencesh`` module is in
``sys.modules`` (the real SDK or the stand-in); when the app never imported it, the
stand-in's class is used rather than paying for an import of the SDK.
"""

from __future__ import annotations

import math
import sys
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, PrivateAttr

LogCallback = Callable[[str], None]
ProgressCallback = Callable[..., None]

_classes: dict[type, type[BaseModel]] = {}


class RuntimeMetadataMixin(BaseModel):
    _log_callback: LogCallback | None = PrivateAttr(default=None)
    _progress_callback: ProgressCallback | None = PrivateAttr(default=None)

    def log(self, message: str) -> None:
        """Send one log line to the caller of the current request."""
        if self._log_callback is not None:
            self._log_callback(str(message))

    def progress(
        self,
        fraction: float | None = None,
        message: str | None = None,
        *,
        current: float | None = None,
        total: float | None = None,
    ) -> None:
        """Report progress as a fraction in [0, 1], or as ``current`` out of ``total``.

        With ``current`` and ``total`` and no fraction, the fraction is derived from
        them (clamped to [0, 1]). A message alone is allowed.
        """
        fraction = _check_number("fraction", fraction)
        current = _check_number("current", current)
        total = _check_number("total", total)
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be within [0, 1], got {fraction}")
        if current is not None and current < 0:
            raise ValueError(f"progress current must not be negative, got {current}")
        if total is not None and total <= 0:
            raise ValueError(f"progress total must be positive, got {total}")
        if fraction is None and current is not None and total is not None:
            fraction = min(1.0, current / total)
        if self._progress_callback is not None:
            self._progress_callback(
                fraction=fraction,
                message=None if message is None else str(message),
                current=current,
                total=total,
            )


def _check_number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"progress {name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"progress {name} must be finite, got {value}")
    return float(value)


def metadata_base() -> type[BaseModel]:
    """The Metadata class apps see: the loaded SDK's, else the stand-in's."""
    candidate = getattr(sys.modules.get("inferencesh"), "Metadata", None)
    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
        return candidate
    from . import sdk_types  # the stand-in costs ~20 ms of model building: only when needed

    return sdk_types.Metadata


def metadata_class(base: type[BaseModel]) -> type[BaseModel]:
    """``base`` extended with ``log`` and ``progress``; one class per base."""
    cls = _classes.get(base)
    if cls is None:
        namespace = {"__module__": __name__, "__qualname__": "RuntimeMetadata"}
        cls = typing.cast(
            "type[BaseModel]", type("RuntimeMetadata", (RuntimeMetadataMixin, base), namespace)
        )
        _classes[base] = cls
    return cls


def make_metadata(fields: dict[str, Any], log: LogCallback, progress: ProgressCallback) -> object:
    """A Metadata instance carrying ``fields``, whose log/progress call the callbacks.

    ``progress`` is called with the keyword arguments ``fraction``, ``message``,
    ``current`` and ``total``. GPU ids are turned into strings, as the SDK types them.
    Raises pydantic.ValidationError when a known field has the wrong type.
    """
    values = dict(fields)
    if isinstance(values.get("gpu_ids"), (list, tuple)):
        values["gpu_ids"] = [str(gpu) for gpu in values["gpu_ids"]]
    instance = metadata_class(metadata_base()).model_validate(values)
    assert isinstance(instance, RuntimeMetadataMixin)
    instance._log_callback = log
    instance._progress_callback = progress
    return instance
