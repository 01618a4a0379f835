"""``run -i NAME=VALUE``: values typed by the input schema, files by ``@``."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.http.input_fields import FieldSyntaxError, apply_fields, split_field, unknown_fields

SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string"},
        "steps": {"type": "integer"},
        "scale": {"type": "number"},
        "fast": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "seed": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "image": {"type": "string", "format": "file"},
        "mask": {"anyOf": [{"type": "string", "format": "file"}, {"type": "null"}]},
        "options": {"$ref": "#/$defs/Options"},
    },
    "$defs": {"Options": {"type": "object", "properties": {"k": {"type": "integer"}}}},
}


def test_values_take_the_schemas_types() -> None:
    data = apply_fields(
        {},
        [
            "prompt=a cat, 7=8",
            "steps=20",
            "scale=7.5",
            "fast=true",
            'tags=["a","b"]',
            "seed=42",
            'options={"k": 1}',
        ],
        SCHEMA,
    )
    assert data == {
        "prompt": "a cat, 7=8",
        "steps": 20,
        "scale": 7.5,
        "fast": True,
        "tags": ["a", "b"],
        "seed": 42,
        "options": {"k": 1},
    }
    assert apply_fields({}, ["seed=null", "prompt=42"], SCHEMA) == {"seed": None, "prompt": "42"}


def test_a_value_that_does_not_fit_stays_text_for_the_app_to_refuse() -> None:
    assert apply_fields({}, ["steps=many", "fast=maybe"], SCHEMA) == {
        "steps": "many",
        "fast": "maybe",
    }


def test_fields_are_laid_over_the_base_input() -> None:
    base = {"prompt": "from input.json", "steps": 1}
    assert apply_fields(base, ["steps=2"], SCHEMA) == {"prompt": "from input.json", "steps": 2}
    assert base["steps"] == 1


def test_at_path_is_a_files_path_for_a_file_field_else_its_text(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG")
    text = tmp_path / "prompt.txt"
    text.write_text("from a file")
    data = apply_fields({}, [f"image=@{photo}", f"mask=@{photo}", f"prompt=@{text}"], SCHEMA)
    assert data == {"image": str(photo), "mask": str(photo), "prompt": "from a file"}
    with pytest.raises(FieldSyntaxError, match="no such file"):
        apply_fields({}, [f"image=@{tmp_path / 'nope.png'}"], SCHEMA)
    with pytest.raises(FieldSyntaxError, match="cannot read"):
        apply_fields({}, [f"prompt=@{tmp_path / 'nope.txt'}"], SCHEMA)


def test_unknown_schema_means_json_when_it_parses() -> None:
    assert apply_fields({}, ["n=3", "s=hi", "l=[1]"], {}) == {"n": 3, "s": "hi", "l": [1]}


@pytest.mark.parametrize("text", ["prompt", "=value", ""])
def test_malformed_fields(text: str) -> None:
    with pytest.raises(FieldSyntaxError, match="expected NAME=VALUE"):
        split_field(text)


def test_unknown_fields_are_those_the_schema_does_not_name() -> None:
    assert unknown_fields({"prompt": "x", "promt": "y"}, SCHEMA) == ["promt"]
    # Forbidden extras are named too (the app refuses them); allowed ones are not.
    assert unknown_fields({"x": 1}, {**SCHEMA, "additionalProperties": False}) == ["x"]
    assert unknown_fields({"x": 1}, {**SCHEMA, "additionalProperties": True}) == []
    assert unknown_fields({"x": 1}, {}) == []
