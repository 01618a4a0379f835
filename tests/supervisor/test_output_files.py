"""``keep_output_files``: output Files copied out of the app's reach, named safely."""

from __future__ import annotations

from pathlib import Path

from supervisor.http.output_files import keep_output_files

SCHEMA = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "format": "file"},
        "others": {"type": "array", "items": {"type": "string", "format": "file"}},
        "note": {"type": "string"},
    },
}


def file_value(path: Path) -> dict[str, object]:
    return {"uri": str(path), "path": str(path), "filename": path.name, "size": 3}


def test_files_are_copied_and_the_output_points_at_the_copies(tmp_path: Path) -> None:
    app_dir, out = tmp_path / "app", tmp_path / "out"
    app_dir.mkdir()
    (app_dir / "a.png").write_bytes(b"one")
    (app_dir / "sub").mkdir()
    (app_dir / "sub" / "a.png").write_bytes(b"two")
    output = {
        "image": file_value(app_dir / "a.png"),
        "others": [file_value(app_dir / "sub" / "a.png")],
        "note": str(app_dir / "a.png"),  # a string, not a File: left alone
    }
    kept = keep_output_files(output, SCHEMA, out)
    assert kept["image"]["path"] == str(out / "a.png")
    assert kept["image"]["uri"] == str(out / "a.png")
    assert kept["others"][0]["path"] == str(out / "a-1.png")  # never overwritten
    assert kept["others"][0]["filename"] == "a-1.png"
    assert (out / "a.png").read_bytes() == b"one"
    assert (out / "a-1.png").read_bytes() == b"two"
    assert kept["note"] == output["note"]
    assert output["image"]["path"] == str(app_dir / "a.png")  # the original is unchanged
    assert sorted(p.name for p in out.iterdir()) == ["a-1.png", "a.png"]


def test_without_files_nothing_is_written(tmp_path: Path) -> None:
    assert keep_output_files({"note": "x"}, SCHEMA, tmp_path / "out") == {"note": "x"}
    missing = {"image": file_value(tmp_path / "gone.png")}
    assert keep_output_files(missing, SCHEMA, tmp_path / "out") == missing
    assert keep_output_files({"a": 1}, None, tmp_path / "out") == {"a": 1}
    assert not (tmp_path / "out").exists()
