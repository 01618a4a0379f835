"""The inferencesh stand-in behaves like the SDK for the types apps use.

The stand-in module is built directly (``build_module``); the real SDK stays installed,
and the behaviours both must share are checked against both.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import sys
import textwrap
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import inferencesh
import pydantic
import pytest
from pydantic import BaseModel

from child import sdk_fallback, sdk_types
from child.app_loader import load_app
from child.wire_values import to_wire

FALLBACK = sdk_fallback.build_module()
SDKS = pytest.mark.parametrize("sdk", [inferencesh, FALLBACK], ids=["real", "fallback"])


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FILE_CACHE_DIR", str(cache))
    return cache


def model_with_file(sdk: ModuleType) -> type[BaseModel]:
    class In(BaseModel):
        file: sdk.File | None = None  # type: ignore[name-defined]

    return In


# -- the module ------------------------------------------------------------------


def test_build_module_exports_and_is_not_registered() -> None:
    module = sdk_fallback.build_module()
    assert module.__name__ == "inferencesh"
    assert set(module.__all__) == set(sdk_fallback.EXPORTS)
    for name in sdk_fallback.EXPORTS:
        assert getattr(module, name) is getattr(sdk_types, name)
    assert sdk_fallback.is_fallback(module)
    assert not sdk_fallback.is_fallback(inferencesh)
    assert sys.modules["inferencesh"] is inferencesh


def test_install_if_missing_keeps_the_real_sdk() -> None:
    assert sdk_fallback.install_if_missing() is False
    assert sys.modules["inferencesh"] is inferencesh


def test_install_if_missing_does_not_import_an_installed_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "inferencesh")
    assert sdk_fallback.install_if_missing() is False
    assert "inferencesh" not in sys.modules


def test_install_if_missing_installs_when_not_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "inferencesh")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert sdk_fallback.install_if_missing() is True
    assert sdk_fallback.is_fallback(sys.modules["inferencesh"])
    assert sdk_fallback.install_if_missing() is False


def test_install_if_missing_replaces_a_blocked_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "inferencesh", None)
    assert sdk_fallback.install_if_missing() is True
    from inferencesh import BaseApp  # type: ignore[attr-defined,unused-ignore]

    assert BaseApp is sdk_types.BaseApp


def test_app_written_for_the_sdk_loads_on_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "inferencesh", FALLBACK)
    monkeypatch.setattr(sys, "path", list(sys.path))
    app_dir = tmp_path / "sdk_app"
    app_dir.mkdir()
    (app_dir / "inference.py").write_text(
        textwrap.dedent(
            """
            from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, File
            from inferencesh import Metadata, function

            class AppSetup(BaseAppSetup):
                scale: int = 2

            class AppInput(BaseAppInput):
                value: int
                attachment: File | None = None

            class AppOutput(BaseAppOutput):
                value: int

            class App(BaseApp):
                async def setup(self, config: AppSetup, metadata: Metadata):
                    self.scale = config.scale

                @function(annotations={"readOnlyHint": True})
                async def run(self, input_data: AppInput) -> AppOutput:
                    return AppOutput(value=input_data.value * self.scale)
            """
        )
    )
    loaded = load_app(app_dir)
    assert list(loaded.functions) == ["run"]
    assert loaded.functions["run"].extra == {"annotations": {"readOnlyHint": True}}
    args = loaded.setup_args({"scale": 3}, sdk_types.Metadata())
    asyncio.run(loaded.app.setup(*args))
    fn = loaded.functions["run"]
    result = asyncio.run(fn.method(*fn.call_args(fn.validate_input({"value": 2}), None)))
    assert to_wire(result) == {"output_meta": None, "value": 6}
    schema = loaded.describe()["functions"]["run"]["input_schema"]
    assert schema["properties"]["attachment"]["anyOf"][0] == {"type": "string", "format": "file"}


# -- BaseApp, Metadata, function ------------------------------------------------


@SDKS
def test_base_app(sdk: ModuleType) -> None:
    class App(sdk.BaseApp):  # type: ignore[name-defined,misc]
        pass

    app = App()
    app.anything = object()
    assert asyncio.run(app.setup()) is None
    assert asyncio.run(app.unload()) is None
    with pytest.raises(NotImplementedError):
        asyncio.run(app.run(sdk.BaseAppInput()))


@SDKS
def test_metadata(sdk: ModuleType) -> None:
    meta = sdk.Metadata(task_id="t", gpu_ids=["0"], custom=1)
    assert meta.task_id == "t" and meta.custom == 1 and meta.app_id is None
    assert set(sdk.Metadata.model_fields) == {
        "app_id",
        "app_version_id",
        "worker_id",
        "gpu_ids",
        "task_id",
        "team_id",
        "user_id",
    }
    meta.update({"user_id": "u", "other": 2})
    assert meta.user_id == "u" and meta.other == 2
    meta.update(sdk.Metadata(team_id="x"))
    assert meta.team_id == "x" and meta.task_id is None


def test_function_decorator() -> None:
    @sdk_types.function(credentials={"slack": {}}, annotations=None, custom=[1])
    def method() -> None:
        pass

    assert method.__inferencesh_function__ == {  # type: ignore[attr-defined]
        "credentials": {"slack": {}},
        "custom": [1],
    }
    with pytest.raises(TypeError):
        sdk_types.function()(42)  # type: ignore[type-var]


# -- File ------------------------------------------------------------------------


@SDKS
def test_file_json_schema(sdk: ModuleType) -> None:
    class In(BaseModel):
        file: sdk.File  # type: ignore[name-defined]

    schema = In.model_json_schema()["properties"]["file"]
    assert {k: v for k, v in schema.items() if k != "title"} == {"type": "string", "format": "file"}


def test_file_schemas_match_the_sdk() -> None:
    assert (
        model_with_file(FALLBACK).model_json_schema()
        == model_with_file(inferencesh).model_json_schema()
    )


@SDKS
def test_local_path_made_absolute(
    sdk: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("abc")
    file = model_with_file(sdk).model_validate({"file": "a.txt"}).file  # type: ignore[attr-defined]
    assert file.path == str(tmp_path / "a.txt")
    assert file.uri == "a.txt"
    assert (file.size, file.content_type, file.filename) == (3, "text/plain", "a.txt")
    assert file.exists()


@SDKS
@pytest.mark.parametrize("empty", [None, "", {}])
def test_empty_values_become_none(sdk: ModuleType, empty: Any) -> None:
    assert model_with_file(sdk).model_validate({"file": empty}).file is None  # type: ignore[attr-defined]


@SDKS
def test_dict_and_file_inputs(sdk: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "b.bin").write_bytes(b"\x00\x01")
    model = model_with_file(sdk)
    from_dict = model.model_validate(  # type: ignore[attr-defined]
        {"file": {"path": str(tmp_path / "b.bin"), "content_type": "x/y"}}
    ).file
    assert from_dict.path == str(tmp_path / "b.bin")
    assert from_dict.content_type == "x/y" and from_dict.size == 2
    same = sdk.File(str(tmp_path / "b.bin"))
    assert model(file=same).file is same  # type: ignore[attr-defined]
    copied = sdk.File(same)
    assert copied.path == same.path and copied.size == 2


@SDKS
def test_invalid_file_input(sdk: ModuleType) -> None:
    with pytest.raises(pydantic.ValidationError):
        model_with_file(sdk).model_validate({"file": 12})
    with pytest.raises(ValueError):
        sdk.File()


@SDKS
def test_serialises_to_non_empty_keys(sdk: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text("{}")
    model = model_with_file(sdk)(file=str(tmp_path / "c.json"))
    dumped = model.model_dump()["file"]
    assert dumped == {
        "uri": str(tmp_path / "c.json"),
        "path": str(tmp_path / "c.json"),
        "content_type": "application/json",
        "size": 2,
        "filename": "c.json",
    }
    assert model.model_dump_json().startswith('{"file":{"uri":')
    remote_only = sdk.File(path=str(tmp_path / "missing"))
    assert set(remote_only.to_dict()) == {"path"}


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


@SDKS
def test_base64_data_uri(sdk: ModuleType, _cache_dir: Path) -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    file = model_with_file(sdk).model_validate({"file": uri}).file  # type: ignore[attr-defined]
    assert Path(file.path).read_bytes() == PNG
    assert Path(file.path).is_relative_to(_cache_dir)
    assert file.path.endswith(".png")
    assert file.content_type == "image/png" and file.size == len(PNG)
    again = sdk.File(uri)
    assert again.path == file.path


@SDKS
def test_url_safe_unpadded_base64_and_plain_data_uris(sdk: ModuleType) -> None:
    unpadded = base64.urlsafe_b64encode(b"\xfb\xff?").decode().rstrip("=")
    assert Path(sdk.File(f"data:;base64,{unpadded}").path).read_bytes() == b"\xfb\xff?"
    plain = sdk.File("data:text/plain,Hello%20World")
    assert Path(plain.path).read_bytes() == b"Hello World"
    assert plain.content_type == "text/plain"


def test_fallback_rejects_bad_data_uris() -> None:
    model = model_with_file(FALLBACK)
    with pytest.raises(pydantic.ValidationError):
        model.model_validate({"file": "data:image/png;base64,@@@@"})
    with pytest.raises(pydantic.ValidationError):
        model.model_validate({"file": "data:nocomma"})
    media, data = sdk_types.decode_data_uri("data:text/plain;charset=utf-8;base64,aGk=")
    assert (media, data) == ("text/plain", b"hi")


def test_file_uri(tmp_path: Path) -> None:
    target = tmp_path / "with space.txt"
    target.write_text("x")
    file = sdk_types.File("file://" + urllib.parse.quote(str(target)))
    assert file.path == str(target) and file.size == 1


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        body = b"remote-bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.hits = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@SDKS
def test_http_download_into_cache(sdk: ModuleType, http_base: str, _cache_dir: Path) -> None:
    file = (
        model_with_file(sdk)
        .model_validate(  # type: ignore[attr-defined]
            {"file": f"{http_base}/dir/image.jpg?x=1"}
        )
        .file
    )
    assert Path(file.path).read_bytes() == b"remote-bytes"
    assert Path(file.path).is_relative_to(_cache_dir)
    assert Path(file.path).name == "image.jpg"
    assert file.uri == f"{http_base}/dir/image.jpg?x=1"
    assert file.content_type == "image/jpeg" and file.size == len(b"remote-bytes")
    again = sdk.File(f"{http_base}/dir/image.jpg?x=1")
    assert again.path == file.path
    assert _Handler.hits == ["/dir/image.jpg?x=1"]


def test_fallback_download_failure_is_a_validation_error(http_base: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="cannot download"):
        model_with_file(FALLBACK).model_validate({"file": f"{http_base}/missing.png"})
