"""Turn what an app returns into values msgpack can carry.

Bytes stay bytes: msgpack has a binary type, so nothing is base64-encoded. A pydantic
model is dumped with ``model_dump(mode="python")`` so that its own serializers apply,
and the dump is then walked beside the model's attribute values. The walk in parallel
is what lets a ``File`` field (which the SDK's serializer has already turned into a
plain dict) still be recognised and completed: its path made absolute, its size and
content type read from the file. Anything else falls back to pydantic's JSON-able form
(datetimes become ISO strings, enums their values, paths strings).
"""

from __future__ import annotations

import dataclasses
import enum
import mimetypes
import os
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

_MISSING: Any = object()
_SCALARS = (str, int, float, bool, type(None), bytes)
_SEQUENCES = (list, tuple, set, frozenset)


def file_types() -> tuple[type, ...]:
    """The File classes in use: the stand-in, and the SDK's once something imported it."""
    found: list[type] = []
    for module in ("child.sdk_types", "inferencesh"):
        file_type = getattr(sys.modules.get(module), "File", None)
        if isinstance(file_type, type) and file_type not in found:
            found.append(file_type)
    return tuple(found)


def _is_local_uri(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme in ("", "file")


def file_to_wire(file: Any) -> dict[str, Any]:
    """A File as the dict of its non-empty keys, completed from the local file.

    The path is made absolute; a missing or local-path ``uri`` becomes that path; when
    the file exists, ``size`` is read from disk (the file may have been written after the
    File was created) and ``content_type``/``filename`` are filled if absent.
    """
    uri: str | None = getattr(file, "uri", None) or None
    raw_path = getattr(file, "path", None)
    path = os.path.abspath(os.fspath(raw_path)) if raw_path else None
    content_type: str | None = getattr(file, "content_type", None) or None
    size: int | None = getattr(file, "size", None)
    filename: str | None = getattr(file, "filename", None) or None
    if path is not None:
        if uri is None or _is_local_uri(uri):
            uri = path
        if os.path.isfile(path):
            size = os.path.getsize(path)
            content_type = content_type or mimetypes.guess_type(path)[0]
            filename = filename or os.path.basename(path)
    values = {
        "uri": uri,
        "path": path,
        "content_type": content_type,
        "size": size,
        "filename": filename,
    }
    return {k: v for k, v in values.items() if v is not None and v != ""}


def to_wire(value: Any) -> Any:
    """``value`` as nested dicts, lists, str, int, float, bool, None and bytes.

    Raises TypeError for a value that has no such form.
    """
    return _convert(value, file_types())


def _key(key: Any, files: tuple[type, ...]) -> str:
    if type(key) is str:
        return key
    converted = _convert(key, files)
    return converted if isinstance(converted, str) else str(converted)


def _convert(value: Any, files: tuple[type, ...]) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, (bytearray, memoryview, bytes)):
        return bytes(value)
    if isinstance(value, files):
        return file_to_wire(value)
    if isinstance(value, BaseModel):
        return _merge(value.model_dump(mode="python"), value, files)
    if isinstance(value, Mapping):
        return {_key(k, files): _convert(v, files) for k, v in value.items()}
    if isinstance(value, _SEQUENCES):
        return [_convert(v, files) for v in value]
    if isinstance(value, enum.Enum):
        return _convert(value.value, files)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _convert(getattr(value, f.name), files) for f in dataclasses.fields(value)}
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and kind.__module__.split(".")[0] in ("numpy", "torch"):
        return _convert(tolist(), files)
    try:
        return to_jsonable_python(value)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise TypeError(f"cannot send a {kind.__qualname__} value: {exc}") from exc


def _model_attr(model: BaseModel, key: Any) -> Any:
    """The attribute of ``model`` that produced ``key`` in its dump, or _MISSING."""
    if not isinstance(key, str):
        return _MISSING
    cls = type(model)
    extra = model.__pydantic_extra__ or {}
    if key in cls.model_fields or key in cls.model_computed_fields or key in extra:
        return getattr(model, key, _MISSING)
    for name, field in cls.model_fields.items():
        if key in (field.alias, field.serialization_alias):
            return getattr(model, name, _MISSING)
    return _MISSING


def _merge(dumped: Any, original: Any, files: tuple[type, ...]) -> Any:
    if isinstance(original, files) and isinstance(dumped, (Mapping, *files)):
        return file_to_wire(original)
    if isinstance(original, BaseModel) and isinstance(dumped, Mapping):
        return {
            _key(k, files): _merge(v, _model_attr(original, k), files) for k, v in dumped.items()
        }
    if (
        isinstance(original, (list, tuple))
        and isinstance(dumped, (list, tuple))
        and len(original) == len(dumped)
    ):
        return [_merge(d, o, files) for d, o in zip(dumped, original, strict=True)]
    if isinstance(original, Mapping) and isinstance(dumped, Mapping):
        return {
            _key(k, files): _merge(v, original.get(k, _MISSING), files) for k, v in dumped.items()
        }
    return _convert(dumped, files)
