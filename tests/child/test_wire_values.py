"""to_wire turns app outputs into msgpack values: bytes stay binary, Files get completed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import os
import uuid
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import inferencesh
import msgpack
import numpy as np
import pytest
from pydantic import BaseModel, Field, computed_field

from child import sdk_types
from child.sdk_fallback import build_module
from child.wire_values import file_to_wire, to_wire

SDKS = pytest.mark.parametrize("sdk", [inferencesh, build_module()], ids=["real", "fallback"])


def roundtrip(value: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


class Color(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Inner(BaseModel):
    blob: bytes
    when: dt.datetime


class Outer(BaseModel):
    inner: Inner
    items: list[Inner]
    mapping: dict[int, Inner]
    color: Color
    level: Level
    tags: set[str]
    pair: tuple[int, str]
    ident: uuid.UUID
    amount: Decimal
    where: Path
    day: dt.date
    anything: Any = None


def test_bytes_stay_bytes() -> None:
    assert to_wire(b"\x00\xff") == b"\x00\xff"
    assert to_wire(bytearray(b"ab")) == b"ab"
    assert type(to_wire(memoryview(b"cd"))) is bytes
    assert roundtrip(to_wire({"k": b"\x00\x01"})) == {"k": b"\x00\x01"}


def test_nested_model() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    inner = Inner(blob=b"\x00raw", when=when)
    model = Outer(
        inner=inner,
        items=[inner, inner],
        mapping={1: inner},
        color=Color.RED,
        level=Level.HIGH,
        tags={"a"},
        pair=(1, "x"),
        ident=uuid.UUID(int=1),
        amount=Decimal("1.5"),
        where=Path("/tmp/x"),
        day=dt.date(2024, 1, 2),
        anything={"deep": [b"\x01", Color.RED]},
    )
    wire = to_wire(model)
    expected_inner = {"blob": b"\x00raw", "when": "2024-05-06T07:08:09Z"}
    assert wire == {
        "inner": expected_inner,
        "items": [expected_inner, expected_inner],
        "mapping": {"1": expected_inner},
        "color": "red",
        "level": 3,
        "tags": ["a"],
        "pair": [1, "x"],
        "ident": "00000000-0000-0000-0000-000000000001",
        "amount": "1.5",
        "where": "/tmp/x",
        "day": "2024-01-02",
        "anything": {"deep": [b"\x01", "red"]},
    }
    assert type(wire["color"]) is str and type(wire["level"]) is int
    assert roundtrip(wire) == wire


def test_plain_containers_and_scalars() -> None:
    assert to_wire(None) is None
    assert to_wire((1, 2.5, True, "s")) == [1, 2.5, True, "s"]
    assert to_wire(frozenset({1})) == [1]
    assert to_wire({Color.RED: 1, 2: 3}) == {"red": 1, "2": 3}
    assert to_wire(dt.datetime(2020, 1, 1)) == "2020-01-01T00:00:00"


@dataclasses.dataclass
class Record:
    name: str
    data: bytes


def test_dataclass_and_numpy() -> None:
    assert to_wire(Record("r", b"\x00")) == {"name": "r", "data": b"\x00"}
    assert to_wire(np.arange(3)) == [0, 1, 2]
    assert to_wire(np.float32(0.5)) == 0.5
    assert to_wire({"m": np.eye(2)}) == {"m": [[1.0, 0.0], [0.0, 1.0]]}


def test_unconvertible_value_raises_type_error() -> None:
    with pytest.raises(TypeError, match="cannot send a object value"):
        to_wire(object())


def test_sdk_output_model_keeps_output_meta() -> None:
    class Out(inferencesh.BaseAppOutput):
        text: str

    assert to_wire(Out(text="t")) == {"output_meta": None, "text": "t"}


def test_user_dicts_with_a_path_key_are_left_alone() -> None:
    class Out(BaseModel):
        info: dict[str, Any]

    assert to_wire(Out(info={"path": "relative/x", "size": 1})) == {
        "info": {"path": "relative/x", "size": 1}
    }


@SDKS
def test_file_fields(sdk: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "pic.png"
    image.write_bytes(b"12345")
    other = tmp_path / "notes.txt"
    other.write_bytes(b"hello world")

    class Out(BaseModel):
        model_config = {"arbitrary_types_allowed": True}
        single: sdk.File  # type: ignore[name-defined]
        optional: sdk.File | None = None  # type: ignore[name-defined]
        many: list[sdk.File] = Field(default_factory=list)  # type: ignore[name-defined]
        named: dict[str, sdk.File] = Field(default_factory=dict)  # type: ignore[name-defined]
        loose: Any = None
        missing: sdk.File | None = None  # type: ignore[name-defined]

    out = Out(
        single=sdk.File("pic.png"),
        optional=sdk.File(path="notes.txt"),
        many=[sdk.File("pic.png"), "notes.txt"],
        named={"a": "pic.png"},
        loose=sdk.File("notes.txt"),
    )
    wire = to_wire(out)
    png = {
        "uri": str(image),
        "path": str(image),
        "content_type": "image/png",
        "size": 5,
        "filename": "pic.png",
    }
    txt = {
        "uri": str(other),
        "path": str(other),
        "content_type": "text/plain",
        "size": 11,
        "filename": "notes.txt",
    }
    assert wire == {
        "single": png,
        "optional": txt,
        "many": [png, txt],
        "named": {"a": png},
        "loose": txt,
        "missing": None,
    }
    assert roundtrip(wire) == wire


@SDKS
def test_file_written_after_creation_gets_its_size(sdk: ModuleType, tmp_path: Path) -> None:
    target = tmp_path / "later.wav"
    file = sdk.File(path=str(target))
    target.write_bytes(b"\x00" * 7)
    assert to_wire(file) == {
        "uri": str(target),
        "path": str(target),
        "content_type": mimetype("later.wav"),
        "size": 7,
        "filename": "later.wav",
    }


def mimetype(name: str) -> str | None:
    import mimetypes

    return mimetypes.guess_type(name)[0]


@SDKS
def test_file_that_does_not_exist_keeps_what_it_has(sdk: ModuleType, tmp_path: Path) -> None:
    file = sdk.File(path=str(tmp_path / "gone.bin"), content_type="application/x-thing")
    assert to_wire(file) == {
        "uri": str(tmp_path / "gone.bin"),
        "path": str(tmp_path / "gone.bin"),
        "content_type": "application/x-thing",
    }


def test_remote_uri_is_kept_beside_the_local_path(tmp_path: Path) -> None:
    local = tmp_path / "cached.jpg"
    local.write_bytes(b"jpg")
    file = sdk_types.File(uri="https://example.com/a.jpg", path=str(local))
    assert file_to_wire(file) == {
        "uri": "https://example.com/a.jpg",
        "path": str(local),
        "content_type": "image/jpeg",
        "size": 3,
        "filename": "cached.jpg",
    }


def test_file_behind_a_serialization_alias(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("abc")

    class Out(BaseModel):
        model_config = {"serialize_by_alias": True}
        result_file: inferencesh.File = Field(serialization_alias="resultFile")

    wire = to_wire(Out(result_file=str(target)))
    assert wire["resultFile"]["size"] == 3
    assert wire["resultFile"]["path"] == str(target)


def test_computed_field_file(tmp_path: Path) -> None:
    target = tmp_path / "c.txt"
    target.write_text("abcd")

    class Out(BaseModel):
        name: str

        @computed_field  # type: ignore[prop-decorator]
        @property
        def file(self) -> inferencesh.File:
            return inferencesh.File(path=os.path.join(str(tmp_path), self.name))

    assert to_wire(Out(name="c.txt"))["file"]["size"] == 4
