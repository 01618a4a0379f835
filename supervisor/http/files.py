"""Files across the HTTP boundary: which input fields are files, which local paths
a client may name, where uploads go, and which output files may be downloaded.

The SDK's ``File`` decodes ``data:`` URIs itself, so those pass through
untouched; http(s) URLs are fetched by the server under ``fetch_policy`` (see
``url_fetch``) and the child gets a local path. A local path from a client
would let it make the app read any file the server can read, so one is accepted
only under directories the operator allowed (``--allow-path``), in the input
and in the setup values alike. Which fields are files is read from the
function's input schema (and the setup schema), where the SDK writes a ``File``
as ``{"type": "string", "format": "file"}``.

Downloads are the mirror image: only the fields that the function's output
schema declares as files are served (regular files within a size limit), each
under an unguessable token kept in a bounded in-memory map, never a path that a
client names; anything else in an output is plain data.
"""

from __future__ import annotations

import copy
import mimetypes
import os
import secrets
import stat
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Loc = tuple[str | int, ...]

FILE_KEYS = frozenset({"uri", "path", "content_type", "size", "filename"})
"""The keys of a File as the child puts it on the wire."""
PASS_THROUGH_SCHEMES = frozenset({"http", "https"})
"""Schemes that pass the path check: the server fetches them itself (``url_fetch``)."""
MAX_DEPTH = 32


# -- which values are files -----------------------------------------------------


def is_file_schema(schema: Any) -> bool:
    return (
        isinstance(schema, Mapping)
        and schema.get("type") == "string"
        and schema.get("format") == "file"
    )


def may_hold_files(schema: Any) -> bool:
    """Whether any part of ``schema`` (its ``$defs`` included) is a file schema: when
    none is, no value of it holds a file, and the per-request walks are skipped.

    Remembered per schema object (an app's schemas live as long as its description;
    the object is kept with the answer, so that a reused ``id`` cannot mislead)."""
    known = _HOLDS_FILES.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    answer = _holds_files(schema, 0)
    if len(_HOLDS_FILES) >= _HOLDS_FILES_SIZE:
        _HOLDS_FILES.clear()
    _HOLDS_FILES[id(schema)] = (schema, answer)
    return answer


_HOLDS_FILES: dict[int, tuple[Any, bool]] = {}
_HOLDS_FILES_SIZE = 1024


def _holds_files(node: Any, depth: int) -> bool:
    if depth > 4 * MAX_DEPTH:
        return True  # too deep to tell: let the walk decide
    if isinstance(node, Mapping):
        return is_file_schema(node) or any(_holds_files(v, depth + 1) for v in node.values())
    if isinstance(node, list):
        return any(_holds_files(v, depth + 1) for v in node)
    return False


def file_locations(schema: Mapping[str, Any], value: Any) -> list[Loc]:
    """Where ``value`` holds files according to ``schema``, as paths of keys and indices."""
    if not may_hold_files(schema):
        return []
    defs = schema.get("$defs", {})
    found: dict[Loc, None] = {}
    for loc in _walk(schema, value, (), defs if isinstance(defs, Mapping) else {}, 0):
        found[loc] = None
    return list(found)


def _walk(schema: Any, value: Any, loc: Loc, defs: Mapping[str, Any], depth: int) -> Iterator[Loc]:
    if depth > MAX_DEPTH or not isinstance(schema, Mapping) or value is None:
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        yield from _walk(defs.get(ref.removeprefix("#/$defs/")), value, loc, defs, depth + 1)
    if is_file_schema(schema):
        yield loc
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for member in schema.get(key, ()):
            yield from _walk(member, value, loc, defs, depth + 1)
    if isinstance(value, Mapping):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = properties.get(name) if isinstance(properties, Mapping) else None
            yield from _walk(sub if sub is not None else extra, item, (*loc, name), defs, depth + 1)
    elif isinstance(value, list):
        prefix = schema.get("prefixItems", ())
        for index, item in enumerate(value):
            sub = prefix[index] if index < len(prefix) else schema.get("items")
            yield from _walk(sub, item, (*loc, index), defs, depth + 1)


def get_at(container: Any, loc: Loc) -> Any:
    for key in loc:
        container = container[key]
    return container


def set_at(container: Any, loc: Loc, value: Any) -> None:
    """Set ``value`` at ``loc``, creating objects on the way; an index may append."""
    for position, key in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(key, int):
            if not isinstance(container, list) or key > len(container):
                raise KeyError(f"no list item {key} to set at {'.'.join(map(str, loc))}")
            if key == len(container):
                container.append(value if last else {})
            elif last:
                container[key] = value
            container = container[key]
        else:
            if not isinstance(container, dict):
                raise KeyError(
                    f"cannot set {key!r} inside a non-object at {'.'.join(map(str, loc))}"
                )
            if last:
                container[key] = value
            else:
                container = container.setdefault(key, {})


def parse_field_path(dotted: str) -> Loc:
    """``"images.0"`` -> ``("images", 0)``: the name of an upload's form part."""
    parts = dotted.split(".")
    if not dotted or any(part == "" for part in parts):
        raise ValueError(f"{dotted!r} is not a dotted field path")
    return tuple(int(part) if part.isdigit() else part for part in parts)


# -- checking local paths -------------------------------------------------------


@dataclass(frozen=True)
class PathPolicy:
    """Local input paths are accepted only under ``allowed`` directories."""

    allowed: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", tuple(Path(os.path.realpath(p)) for p in self.allowed))

    def resolve(self, raw: str) -> str | None:
        """The real absolute path of ``raw`` if it lies under an allowed directory."""
        real = Path(os.path.realpath(os.path.abspath(raw)))
        if any(real == root or root in real.parents for root in self.allowed):
            return str(real)
        return None


def check_file_inputs(
    schema: Mapping[str, Any], data: dict[str, Any], policy: PathPolicy, where: str = "input"
) -> list[dict[str, Any]]:
    """Vet every file value of ``data`` in place; return field errors for the refused ones.

    The same for each place a caller names files: ``where`` is ``"input"`` or
    ``"setup"``, the first item of each error's ``loc``.

    URLs and ``data:`` URIs stay as they are; an allowed local path (or ``file:``
    URL) becomes its real absolute path, since the child resolves relative paths
    against the app's directory rather than the server's.
    """
    errors: list[dict[str, Any]] = []
    for loc in file_locations(schema, data):
        value = get_at(data, loc)
        if isinstance(value, str):
            checked, error = _check_reference(value, policy)
            if error is None:
                set_at(data, loc, checked)
        elif isinstance(value, dict):
            error = None
            for key in ("uri", "path"):
                ref = value.get(key)
                if isinstance(ref, str) and error is None:
                    checked, error = _check_reference(ref, policy, local=key == "path")
                    if error is None:
                        value[key] = checked
        else:
            continue
        if error is not None:
            errors.append({"loc": [where, *loc], "msg": error, "type": "file_not_allowed"})
    return errors


def _check_reference(ref: str, policy: PathPolicy, local: bool = False) -> tuple[str, str | None]:
    """``ref`` as the child should get it, or an error message."""
    scheme = "" if local else urllib.parse.urlsplit(ref).scheme.lower()
    if not local and (ref.startswith("data:") or scheme in PASS_THROUGH_SCHEMES):
        return ref, None
    if scheme == "file":
        path = urllib.request.url2pathname(urllib.parse.urlsplit(ref).path)
    elif len(scheme) > 1:
        return ref, f"unsupported URL scheme {scheme!r}: use http(s), data: or an upload"
    else:
        path = ref
    resolved = policy.resolve(path) if path else None
    if resolved is None:
        return ref, (
            "local paths are accepted only under the server's --allow-path directories; "
            "send an http(s) URL, a data: URI or a multipart upload instead"
        )
    return resolved, None


def remote_url(value: Any) -> str | None:
    """The http(s) URL a file value names (a string, or a File's ``uri``), if any."""
    uri = value.get("uri") if isinstance(value, dict) else value
    if isinstance(uri, str) and urllib.parse.urlsplit(uri).scheme.lower() in PASS_THROUGH_SCHEMES:
        return uri
    return None


def safe_filename(name: str | None, fallback: str = "upload") -> str:
    """The last component of a client-supplied file name, without anything odd."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    cleaned = "".join(c if c.isalnum() or c in "._- " else "_" for c in base).strip(" .")
    return cleaned[:200] or fallback


# -- serving output files -------------------------------------------------------


@dataclass(frozen=True)
class ServedFile:
    """An output file published for download, found again by its unguessable token."""

    request_id: str
    token: str
    path: str
    filename: str
    content_type: str | None


class FileRegistry:
    """Output files that may be downloaded, by token; the oldest go past ``capacity``."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._by_token: OrderedDict[str, ServedFile] = OrderedDict()
        self._by_path: dict[tuple[str, str], str] = {}

    def __len__(self) -> int:
        return len(self._by_token)

    def register(
        self, request_id: str, path: str, filename: str, content_type: str | None
    ) -> ServedFile:
        token = self._by_path.get((request_id, path))
        if token is not None and token in self._by_token:
            self._by_token.move_to_end(token)
            return self._by_token[token]
        served = ServedFile(request_id, secrets.token_urlsafe(18), path, filename, content_type)
        self._by_token[served.token] = served
        self._by_path[(request_id, path)] = served.token
        while len(self._by_token) > self.capacity:
            _, old = self._by_token.popitem(last=False)
            self._by_path.pop((old.request_id, old.path), None)
        return served

    def lookup(self, request_id: str, token: str) -> ServedFile | None:
        served = self._by_token.get(token)
        if served is None or not secrets.compare_digest(served.request_id, request_id):
            return None
        return served

    def paths(self) -> list[str]:
        return [served.path for served in self._by_token.values()]


DEFAULT_MAX_OUTPUT_FILE = 4 * 2**30
"""Bytes an output file may have to be published (``ServerSettings.max_output_file_size``)."""


def publishable(path: str, max_size: int, owner: int | None = None) -> str | None:
    """Why the file at ``path`` may not be published, or None when it may.

    Only regular files (after following links): never a device, a FIFO or a
    directory, whose reads would never end or leak more than a file. With
    ``owner`` (the uid children run as, ``--child-user``), only files that user
    owns: the server reads with more rights than the app, which must not borrow
    them to publish what it could not read itself.
    """
    try:
        info = os.stat(path)
    except OSError:
        return "the file does not exist"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if owner is not None and info.st_uid != owner:
        return "not owned by the user the app runs as"
    if info.st_size > max_size:
        return f"larger than the server's limit of {max_size} bytes"
    return None


def publish_files(
    schema: Mapping[str, Any] | None,
    value: Any,
    request_id: str,
    registry: FileRegistry,
    base_url: str,
    max_size: int = DEFAULT_MAX_OUTPUT_FILE,
    owner: int | None = None,
) -> Any:
    """``value`` with each File of the output ``schema`` turned into a download URL.

    Only the places the function's output schema declares as files are looked
    at: a dict with a ``path`` elsewhere is plain data and goes back as it is,
    so an app that echoes its input cannot publish a file the client names. A
    published File loses its local ``path``, which means nothing to a remote
    client; one that cannot be published keeps no path either and says why in
    ``error``. ``owner``: see ``publishable``.
    """
    if not isinstance(schema, Mapping) or value is None:
        return value
    locations = file_locations(schema, value)
    if not locations:
        return value
    value = copy.deepcopy(value)
    for loc in locations:
        published = _publish_one(
            get_at(value, loc), request_id, registry, base_url, max_size, owner
        )
        if not loc:
            return published
        set_at(value, loc, published)
    return value


def _publish_one(
    value: Any,
    request_id: str,
    registry: FileRegistry,
    base_url: str,
    max_size: int,
    owner: int | None,
) -> Any:
    if isinstance(value, str) and os.path.isabs(value):
        value = {"path": value}
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        return value
    path = value["path"]
    kept = {k: v for k, v in value.items() if k in FILE_KEYS and k != "path"}
    refused = publishable(path, max_size, owner)
    if refused is not None:
        kept.pop("uri", None)
        return {**kept, "error": f"output file not published: {refused}"}
    filename = safe_filename(value.get("filename") or os.path.basename(path), "file")
    content_type = value.get("content_type") or mimetypes.guess_type(filename)[0]
    served = registry.register(request_id, path, filename, content_type)
    url = (
        f"{base_url.rstrip('/')}/files/{urllib.parse.quote(request_id)}/{served.token}/"
        f"{urllib.parse.quote(filename)}"
    )
    published: dict[str, Any] = {"uri": url, "filename": filename}
    if content_type:
        published["content_type"] = content_type
    if value.get("size") is not None:
        published["size"] = value["size"]
    return published


def under_any(path: str, roots: Sequence[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in roots)
