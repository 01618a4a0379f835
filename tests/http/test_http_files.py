"""The file policies of ``http_files`` alone: what is published, what a caller may name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from supervisor.http.files import FileRegistry, file_locations, may_hold_files, publish_files

FILE = {"type": "string", "format": "file"}
BASE = "http://server"


def _schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def _publish(schema: Any, value: Any, max_size: int = 1 << 20) -> Any:
    return publish_files(schema, value, "req", FileRegistry(), BASE, max_size)


def test_a_file_anywhere_in_a_schema_is_found_and_none_means_no_walk() -> None:
    under_defs = {
        "type": "object",
        "properties": {"image": {"$ref": "#/$defs/Image"}},
        "$defs": {"Image": {"anyOf": [FILE, {"type": "null"}]}},
    }
    assert may_hold_files(under_defs)
    assert file_locations(under_defs, {"image": "a.png"}) == [("image",)]
    plain = _schema(x={"type": "integer"}, tags={"type": "array", "items": {"type": "string"}})
    assert not may_hold_files(plain)
    assert file_locations(plain, {"x": 1, "tags": ["a"]}) == []
    assert not may_hold_files(None)


def test_what_a_schema_holds_is_remembered_per_object_not_per_id() -> None:
    for _ in range(3):  # new dicts may reuse the id of a freed one
        assert not may_hold_files(_schema(x={"type": "integer"}))
        assert may_hold_files(_schema(x=FILE))


def test_a_plain_dict_with_a_path_is_data(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    value = {"data": {"path": str(secret)}, "plain": {"path": str(secret), "size": 1}}
    schema = _schema(data={"type": "object", "additionalProperties": True})
    assert _publish(schema, value) == value
    assert _publish(None, value) == value


def test_declared_files_nested_in_lists_and_refs_are_published(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a")
    b.write_text("b")
    schema = {
        **_schema(main=FILE, bundle={"$ref": "#/$defs/Bundle"}),
        "$defs": {
            "Bundle": _schema(
                files={"type": "array", "items": FILE},
                note={"type": "object", "additionalProperties": True},
            )
        },
    }
    value = {
        "main": {"path": str(a)},
        "bundle": {"files": [{"path": str(b)}], "note": {"path": str(a)}},
    }
    published = _publish(schema, value)
    assert published["main"]["uri"].startswith(f"{BASE}/files/req/")
    assert published["bundle"]["files"][0]["uri"].startswith(f"{BASE}/files/req/")
    assert published["bundle"]["note"] == {"path": str(a)}
    assert value["main"] == {"path": str(a)}, "the caller's value is left alone"


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "missing", "too_big"])
def test_only_regular_files_within_the_size_limit(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target = Path("/dev/zero")
    elif kind == "directory":
        target.mkdir()
    elif kind == "too_big":
        target.write_bytes(b"x" * 101)
    registry = FileRegistry()
    published = publish_files(
        _schema(out=FILE), {"out": {"path": str(target)}}, "req", registry, BASE, 100
    )
    assert "uri" not in published["out"] and "path" not in published["out"]
    assert published["out"]["error"].startswith("output file not published")
    assert len(registry) == 0


def test_a_link_to_a_regular_file_is_served_as_that_file(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("ok")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    published = _publish(_schema(out=FILE), {"out": {"path": str(link)}})
    assert published["out"]["uri"].endswith("/link.txt")


def test_with_a_child_user_only_its_own_files_are_published(tmp_path: Path) -> None:
    """The server reads as root: an app running as another user must not publish
    what that user could not read (here, files this test's user owns)."""
    mine = tmp_path / "mine.txt"
    mine.write_text("x")
    link = tmp_path / "link.txt"
    link.symlink_to(mine)
    other_uid = os.getuid() + 1
    schema = _schema(a=FILE, b=FILE)
    published = publish_files(
        schema,
        {"a": {"path": str(mine)}, "b": {"path": str(link)}},
        "r",
        FileRegistry(),
        BASE,
        100,
        other_uid,
    )
    for key in ("a", "b"):
        assert (
            published[key]["error"]
            == "output file not published: not owned by the user the app runs as"
        )
    assert "uri" in _publish(schema, {"a": {"path": str(mine)}})["a"]
