"""Stand-ins for the ``inferencesh`` SDK types, used when the SDK is not installed.

Apps import ``BaseApp``, ``BaseAppInput``, ``BaseAppOutput``, ``BaseAppSetup``, ``File``,
``Metadata`` and ``function`` from ``inferencesh``. An app environment without the wheel
would fail at its first line, so ``sdk_fallback`` registers a module built from these
classes instead. They follow the SDK's observable contract (see ANCHORS.md): ``BaseApp``
is a pydantic model that accepts arbitrary attributes, ``File`` is a custom pydantic type
that resolves eagerly (local path made absolute, ``data:`` decoded and http(s) downloaded
into the file cache), and ``Metadata`` carries the platform's ids.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

F = TypeVar("F", bound=Callable[..., Any])

FUNCTION_META_ATTR = "__inferencesh_function__"
DOWNLOAD_TIMEOUT_S = 120.0
_COPY_CHUNK = 1 << 20
_DATA_URI = re.compile(r"^data:([^,]*),(.*)$", re.DOTALL)
_FILE_KEYS = ("uri", "path", "content_type", "size", "filename")


def file_cache_dir() -> Path:
    """``$FILE_CACHE_DIR``, else ``~/.cache/inferencesh/files``; created on demand."""
    configured = os.environ.get("FILE_CACHE_DIR")
    directory = Path(configured) if configured else Path.home() / ".cache/inferencesh/files"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _is_url(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme in ("http", "https")


def _write_atomically(target: Path, source: bytes | BinaryIO) -> None:
    """Write ``source`` to ``target`` through a temporary file, so no reader sees a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes):
                out.write(source)
            else:
                shutil.copyfileobj(source, out, _COPY_CHUNK)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """The media type and the bytes of a ``data:`` URI (RFC 2397, lenient base64)."""
    match = _DATA_URI.match(uri)
    if match is None:
        raise ValueError("invalid data URI: no ',' separator")
    header, payload = match.groups()
    params = [p.strip() for p in header.split(";")]
    media_type = params[0] or "text/plain"
    if "base64" in (p.lower() for p in params[1:]):
        cleaned = re.sub(r"\s+", "", payload).replace("-", "+").replace("_", "/")
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            return media_type, base64.b64decode(cleaned, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"invalid base64 in data URI: {exc}") from exc
    return media_type, urllib.parse.unquote_to_bytes(payload)


def _data_uri_to_cache(uri: str) -> tuple[Path, str]:
    media_type, data = decode_data_uri(uri)
    ext = mimetypes.guess_extension(media_type.split(";")[0]) or ""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = file_cache_dir() / "data_uri" / digest / f"file{'.jpg' if ext == '.jpe' else ext}"
    if not target.exists():
        _write_atomically(target, data)
    return target, media_type


def _download_to_cache(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    digest = hashlib.sha256(f"{parts.netloc}{parts.path}?{parts.query}".encode()).hexdigest()
    target = file_cache_dir() / digest[:12] / (os.path.basename(parts.path) or "download")
    if target.exists():
        os.utime(target)
        return target
    from urllib.request import Request, urlopen  # only here: it costs ~30 ms to import

    request = Request(url, headers={"User-Agent": "appvisor"})
    try:
        with urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            _write_atomically(target, response)
    except OSError as exc:
        raise ValueError(f"cannot download {url}: {exc}") from exc
    return target


class File:
    """A file given as a URI (local path, ``file:``, ``data:``, http or https) or a path.

    The constructor resolves it at once to a local ``path``, so that an app reading
    ``file.path`` never blocks on the network later.
    """

    uri: str | None
    content_type: str | None
    size: int | None
    filename: str | None

    def __init__(
        self,
        initializer: str | os.PathLike[str] | Mapping[str, Any] | File | None = None,
        *,
        uri: str | None = None,
        path: str | os.PathLike[str] | None = None,
        content_type: str | None = None,
        size: int | None = None,
        filename: str | None = None,
    ) -> None:
        if isinstance(initializer, File):
            uri, path = initializer.uri, initializer.path
            content_type = content_type or initializer.content_type
            size = size or initializer.size
            filename = filename or initializer.filename
        elif isinstance(initializer, Mapping):
            uri = initializer.get("uri", uri)
            path = initializer.get("path", path)
            content_type = initializer.get("content_type", content_type)
            size = initializer.get("size", size)
            filename = initializer.get("filename", filename)
        elif isinstance(initializer, (str, os.PathLike)):
            uri = os.fspath(initializer)
        elif initializer is not None:
            raise ValueError(f"invalid input for File: {initializer!r}")
        if not uri and not path:
            raise ValueError("File needs a 'uri' or a 'path'")
        self.uri = uri or None
        self.content_type = content_type
        self.size = size
        self.filename = filename
        self._path: str | None = None
        if path:
            self._path = os.path.abspath(os.fspath(path))
        elif uri and uri.startswith("data:"):
            cached, media_type = _data_uri_to_cache(uri)
            self._path = str(cached)
            self.content_type = self.content_type or media_type
        elif uri and _is_url(uri):
            self._path = str(_download_to_cache(uri))
        elif uri and uri.startswith("file:"):
            from urllib.request import url2pathname

            local = url2pathname(urllib.parse.urlsplit(uri).path)
            self._path = os.path.abspath(local)
        elif uri:
            self._path = os.path.abspath(uri)
        self.refresh_metadata(overwrite=False)

    @property
    def path(self) -> str | None:
        return self._path

    @path.setter
    def path(self, value: str | os.PathLike[str] | None) -> None:
        self._path = None if value is None else os.path.abspath(os.fspath(value))

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> File:
        return cls(path=path)

    def exists(self) -> bool:
        return self._path is not None and os.path.exists(self._path)

    def refresh_metadata(self, overwrite: bool = True) -> None:
        """Fill ``content_type``, ``size`` and ``filename`` from the local file, if any."""
        if self._path is None or not os.path.isfile(self._path):
            return
        if overwrite or not self.content_type:
            self.content_type = mimetypes.guess_type(self._path)[0] or self.content_type
        if overwrite or not self.size:
            self.size = os.path.getsize(self._path)
        if overwrite or not self.filename:
            self.filename = os.path.basename(self._path)

    def to_dict(self) -> dict[str, Any]:
        values = {
            "uri": self.uri,
            "path": self._path,
            "content_type": self.content_type,
            "size": self.size,
            "filename": self.filename,
        }
        return {k: values[k] for k in _FILE_KEYS if values[k] is not None}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"File({fields})"

    @classmethod
    def _validate(cls, value: Any) -> File | None:
        if value is None or value == "" or value == {}:
            return None
        if isinstance(value, cls):
            return value
        if isinstance(value, (str, os.PathLike, Mapping)):
            return cls(value)
        raise ValueError(f"invalid input for File: {type(value).__name__}")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda f: f.to_dict() if isinstance(f, File) else f
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "file"}


class Metadata(BaseModel):
    """Ids of the platform objects a setup or run belongs to; more keys are allowed."""

    model_config = ConfigDict(extra="allow")

    app_id: str | None = None
    app_version_id: str | None = None
    worker_id: str | None = None
    gpu_ids: list[str] | None = None
    task_id: str | None = None
    team_id: str | None = None
    user_id: str | None = None

    def update(self, other: Mapping[str, Any] | BaseModel) -> None:
        values = other.model_dump() if isinstance(other, BaseModel) else other
        for key, value in values.items():
            setattr(self, key, value)


class BaseAppSetup(BaseModel):
    pass


class BaseAppInput(BaseModel):
    pass


class BaseAppOutput(BaseModel):
    output_meta: Any = Field(
        default=None,
        description="Structured metadata about inputs/outputs for pricing calculation",
    )


class BaseApp(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="allow")

    async def setup(self) -> None:
        return None

    async def run(self, app_input: BaseAppInput) -> BaseAppOutput:
        raise NotImplementedError("run method must be implemented")

    async def unload(self) -> None:
        return None


def function(**meta: Any) -> Callable[[F], F]:
    """Tag an app method with per-function metadata (credentials, annotations, ...)."""
    declared = {k: v for k, v in meta.items() if v is not None}

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"@function decorates a method, got {type(fn).__name__}")
        setattr(fn, FUNCTION_META_ATTR, dict(declared))
        return fn

    return decorate
