"""PROTOCOL.md must describe the code as it is: these tests fail when the two drift."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import pytest

import protocol
from protocol import messages as m
from protocol.error_info import ErrorInfo, ErrorType, FieldError
from protocol.framing import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE, encode_frames
from protocol.states import TRANSITIONS, State

DOC_PATH = Path(protocol.__file__).resolve().parent / "PROTOCOL.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
MESSAGE_CLASSES = list(m.MESSAGE_TYPES.values())


def section(heading: str) -> str:
    """The text under a markdown heading (exact line), up to the next heading."""
    lines = DOC.splitlines()
    start = lines.index(heading) + 1
    end = next(
        (i for i in range(start, len(lines)) if lines[i].startswith("#")),
        len(lines),
    )
    return "\n".join(lines[start:end])


def table_rows(text: str) -> list[list[str]]:
    """Cells of the markdown table rows in ``text`` (header and separator rows dropped)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if all(set(c) <= set("-: ") for c in cells):
            continue  # separator
        rows.append(cells)
    return rows[1:]  # drop the header row


def code_blocks() -> list[str]:
    return [" ".join(b.split()) for b in re.findall(r"```[a-z]*\n(.*?)```", DOC, re.S)]


def doc_type(annotation: Any) -> str:
    """The notation PROTOCOL.md uses for a field's type annotation."""
    if annotation is Any:
        return "any"
    if annotation is ErrorInfo:
        return "map"
    if annotation is type(None):
        return "nil"
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(doc_type(a) for a in typing.get_args(annotation))
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"map<{doc_type(key)}, {doc_type(value)}>"
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list<{doc_type(item)}>"
    return {str: "str", int: "int", float: "float", bool: "bool", bytes: "bin"}[annotation]


def doc_default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return "nil" if f.default is None else repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return f"`{f.default_factory()!r}`"
    return "—"


# -- messages ---------------------------------------------------------------------


def test_protocol_version() -> None:
    assert f"`PROTOCOL_VERSION = {m.PROTOCOL_VERSION}`" in DOC
    assert f"MUST be `{m.PROTOCOL_VERSION}`" in section("### `hello`")


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.TYPE)
def test_every_message_has_a_section(cls: type[m.Message]) -> None:
    assert f"### `{cls.TYPE}`" in DOC.splitlines()
    assert f"[`{cls.TYPE}`](#{cls.TYPE})" in DOC  # listed in the table of contents


def test_summary_table() -> None:
    rows = table_rows(section("## 5. Messages"))
    directions = {row[0].strip("`"): row[1] for row in rows}
    assert directions == {
        cls.TYPE: "either way"
        if cls.BOTH_WAYS
        else "supervisor → child"
        if cls.TO_CHILD
        else "child → supervisor"
        for cls in MESSAGE_CLASSES
    }
    assert f"{len(MESSAGE_CLASSES)} message types" in DOC.replace("Seventeen", "17")


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.TYPE)
def test_field_tables_match_the_dataclasses(cls: type[m.Message]) -> None:
    text = section(f"### `{cls.TYPE}`")
    fields = dataclasses.fields(cls)
    if not fields:
        assert "No fields" in text
        assert not table_rows(text)
        return
    hints = typing.get_type_hints(cls)
    rows = {row[0].strip("`"): row for row in table_rows(text)}
    assert list(rows) == [f.name for f in fields], "fields missing, extra, or out of order"
    for f in fields:
        _, type_cell, required_cell, default_cell, meaning = rows[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        assert type_cell == doc_type(hints[f.name]), f"{cls.TYPE}.{f.name} type"
        assert required_cell == ("yes" if required else "no"), f"{cls.TYPE}.{f.name} required"
        assert default_cell == doc_default(f), f"{cls.TYPE}.{f.name} default"
        assert meaning, f"{cls.TYPE}.{f.name} has no description"


def test_every_field_name_is_mentioned() -> None:
    for cls in MESSAGE_CLASSES:
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in DOC, f"{cls.TYPE}.{f.name}"


# -- errors -----------------------------------------------------------------------


def test_every_error_type_is_described() -> None:
    rows = table_rows(section("### Error types"))
    assert [row[0].strip("`") for row in rows] == [t.value for t in ErrorType]
    assert all(row[1] for row in rows)
    for error_type in ErrorType:
        assert f"`{error_type.value}`" in DOC


def test_error_object_fields() -> None:
    text = section("## 7. The error object")
    tables = text.split("Each **field error** is a map:")
    error_rows = [row[0].strip("`") for row in table_rows(tables[0])]
    assert error_rows == [f.name for f in dataclasses.fields(ErrorInfo)]
    field_error_rows = [row[0].strip("`") for row in table_rows(tables[1])]
    assert field_error_rows == [f.name for f in dataclasses.fields(FieldError)]


# -- states -----------------------------------------------------------------------


def test_state_names() -> None:
    rows = table_rows(section("## 8. States").split("### Transition table")[0])
    assert [row[0].strip("`") for row in rows] == [s.value for s in State]


def test_transition_table_matches_the_code() -> None:
    block = DOC.split("<!-- state-table:begin -->")[1].split("<!-- state-table:end -->")[0]
    lines = [line for line in block.strip().splitlines() if line.strip()]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header[0] == "state"
    assert sorted(header[1:]) == sorted(m.MESSAGE_TYPES)
    rows = table_rows(block)
    assert [row[0] for row in rows] == [s.value for s in State]
    for row in rows:
        state = State(row[0])
        for name, cell in zip(header[1:], row[1:], strict=True):
            cls = m.MESSAGE_TYPES[name]
            token = cell.split()[0]
            if cls is m.Hello:
                allowed = state is State.AWAITING_HELLO
                assert (token != "—") == allowed, f"{state.value}/{name}"
                continue
            target = TRANSITIONS.get((state, cls))
            expected = "—" if target is None else "=" if target is state else target.value
            assert token == expected, f"{state.value}/{name}: doc {cell!r}, code {expected!r}"


# -- numbers and bytes --------------------------------------------------------------


def test_limits() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 2**20
    assert DEFAULT_MAX_MESSAGE_SIZE == 2**30
    text = section("### Limits")
    assert f"16 MiB ({DEFAULT_MAX_FRAME_SIZE:,} bytes)".replace(",", " ") in text
    assert f"1 GiB ({DEFAULT_MAX_MESSAGE_SIZE:,} bytes)".replace(",", " ") in text


def spaced_hex(data: bytes) -> str:
    return data.hex(" ")


@pytest.mark.parametrize(
    ("message", "max_frame_size"),
    [
        (m.Ping(seq=1), DEFAULT_MAX_FRAME_SIZE),
        (m.Pong(seq=1), DEFAULT_MAX_FRAME_SIZE),
        (m.Ping(seq=1), 10),
        (m.Hello(protocol_version=1, pid=4242, runtime_version="0.1.0"), DEFAULT_MAX_FRAME_SIZE),
        (m.Result(id="r1", output={"png": b"\x89PNG"}), DEFAULT_MAX_FRAME_SIZE),
        (
            m.Error(id="r1", error=ErrorInfo(type=ErrorType.CANCELLED, message="cancelled")),
            DEFAULT_MAX_FRAME_SIZE,
        ),
    ],
    ids=["ping", "pong", "ping-split", "hello", "result-bytes", "error"],
)
def test_worked_examples_are_real_bytes(message: m.Message, max_frame_size: int) -> None:
    frames = b"".join(encode_frames(m.encode(message), max_frame_size))
    assert spaced_hex(frames) in code_blocks()


def test_ping_example_is_annotated() -> None:
    payload = m.encode(m.Ping(seq=1))
    text = section("### A ping, in one frame")
    assert f"`{spaced_hex(len(payload).to_bytes(4, 'big'))}`" in text
    annotated = "".join(row[0].strip("`").replace(" ", "") for row in table_rows(text))
    assert bytes.fromhex(annotated) == b"".join(encode_frames(payload))
