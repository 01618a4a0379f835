"""``run -i name=value``: an input given field by field, typed by the input schema.

As with Cog's ``-i``, each value is text on the command line: the function's
input schema says what it should become (``-i steps=20`` an integer, ``-i
scale=7.5`` a number, ``-i fast=true`` a boolean, ``-i tags='["a","b"]'`` a
list). ``@path`` names a file: for a ``File`` field it becomes the file's
absolute path (the app's ``File`` reads it), for any other field the file's
text. A value that does not fit its type is passed as text, and the app's own
validation then says what is wrong (exit code 3). Pure: the schema comes from
the app's description, the files are read only for ``@``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .files import is_file_schema

BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class FieldSyntaxError(ValueError):
    """A ``-i`` that is not ``NAME=VALUE``, or an ``@file`` that cannot be read."""


def split_field(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise FieldSyntaxError(f"-i {text!r}: expected NAME=VALUE (e.g. -i prompt='a cat')")
    return name.strip(), value


def apply_fields(
    base: Mapping[str, Any], fields: Sequence[str], schema: Mapping[str, Any]
) -> dict[str, Any]:
    """``base`` with each ``NAME=VALUE`` of ``fields`` laid over it, typed by ``schema``."""
    data = dict(base)
    properties = schema.get("properties") or {}
    defs = schema.get("$defs") or {}
    for text in fields:
        name, raw = split_field(text)
        field_schema = _resolve(properties.get(name) or {}, defs)
        if raw.startswith("@"):
            path = Path(raw[1:]).expanduser()
            if _accepts_file(field_schema, defs):
                if not path.is_file():
                    raise FieldSyntaxError(f"-i {name}: no such file: {path}")
                data[name] = str(path.resolve())
                continue
            try:
                raw = path.read_text()
            except OSError as exc:
                raise FieldSyntaxError(f"-i {name}: cannot read {path}: {exc.strerror}") from None
        data[name] = coerce(raw, field_schema, defs)
    return data


def unknown_fields(data: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Input keys the schema does not name (typos the model would silently drop)."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or schema.get("additionalProperties") not in (
        None,
        False,
    ):
        return []
    return sorted(key for key in data if key not in properties)


def coerce(raw: str, schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Any:
    """``raw`` as the type ``schema`` names; the text itself when it does not fit."""
    for kind in _types(schema, defs):
        try:
            if kind == "string":
                return raw
            if kind == "integer":
                return int(raw)
            if kind == "number":
                return float(raw)
            if kind == "boolean" and raw.lower() in BOOLEANS:
                return BOOLEANS[raw.lower()]
            if kind == "null" and raw.lower() in ("null", "none", ""):
                return None
            if kind in ("array", "object"):
                value = json.loads(raw)
                if isinstance(value, list if kind == "array" else dict):
                    return value
        except ValueError:
            continue
    if not _types(schema, defs):  # nothing known: JSON if it parses, else text
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _resolve(schema: Any, defs: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(schema, Mapping):
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"))
        return target if isinstance(target, Mapping) else {}
    return schema


def _options(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    options = [_resolve(o, defs) for key in ("anyOf", "oneOf") for o in schema.get(key) or ()]
    return options or [schema]


def _types(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[str]:
    """The JSON types a field takes, non-null first (``"3"`` for ``int | None`` is 3)."""
    kinds: list[str] = []
    for option in _options(schema, defs):
        kind = option.get("type")
        for name in kind if isinstance(kind, list) else [kind]:
            if isinstance(name, str) and name not in kinds:
                kinds.append(name)
    return sorted(kinds, key=lambda k: k == "null")


def _accepts_file(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> bool:
    return any(is_file_schema(option) for option in _options(schema, defs))
