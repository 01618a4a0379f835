"""load_app imports app directories as private packages and adapts to setup signatures."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pydantic
import pytest
from inferencesh import Metadata
from pydantic import BaseModel

from child.app_loader import AppLoadError, LoadedApp, SetupConfig, load_app
from child.metadata import make_metadata
from child.wire_values import to_wire

APPS = Path(__file__).resolve().parent.parent / "apps"


@pytest.fixture(autouse=True)
def _restore_sys_path() -> Iterator[None]:
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def call(method: Any, *args: Any) -> Any:
    result = method(*args)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _collect(agen: Any) -> list[Any]:
    return [item async for item in agen]


def metadata(**fields: Any) -> Any:
    return make_metadata(fields, lambda _m: None, lambda **_kw: None)


def write_app(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def set_up(loaded: LoadedApp, config: dict[str, Any], **meta: Any) -> None:
    call(loaded.app.setup, *loaded.setup_args(config, metadata(**meta)))


def run(loaded: LoadedApp, function: str, data: dict[str, Any], **meta: Any) -> Any:
    fn = loaded.functions[function]
    return to_wire(call(fn.method, *fn.call_args(fn.validate_input(data), metadata(**meta))))


# -- the multi app ---------------------------------------------------------------


def test_multi_describe() -> None:
    loaded = load_app(APPS / "multi")
    described = loaded.describe()
    assert set(described) == {"name", "functions", "setup_schema"}
    assert described["name"] == "multi"
    assert list(described["functions"]) == ["run", "reverse", "count", "add"]
    run_fn = described["functions"]["run"]
    assert set(run_fn) == {"description", "input_schema", "output_schema", "streaming", "extra"}
    assert run_fn["description"] == "Greet someone."
    assert run_fn["input_schema"]["required"] == ["name"]
    assert "greeting" in run_fn["output_schema"]["properties"]
    assert run_fn["streaming"] is False
    assert run_fn["extra"] == {}
    assert described["functions"]["count"]["streaming"] is True
    assert described["functions"]["count"]["output_schema"]["title"] == "CountOutput"
    assert described["setup_schema"]["properties"]["greeting"]["default"] == "Hello"
    msgpack.packb(described, use_bin_type=True)


def test_multi_functions_kinds() -> None:
    functions = load_app(APPS / "multi").functions
    assert {name: fn.kind for name, fn in functions.items()} == {
        "run": "async",
        "reverse": "async",
        "count": "async_gen",
        "add": "sync",
    }
    assert not any(fn.wants_metadata for fn in functions.values())


def test_multi_runs_every_function() -> None:
    loaded = load_app(APPS / "multi")
    set_up(loaded, {"greeting": "Yo"})
    assert run(loaded, "run", {"name": "Ann"}) == {"greeting": "Yo, Ann", "output_meta": None}
    assert run(loaded, "reverse", {"text": "abc", "shout": True})["text"] == "CBA!"
    assert run(loaded, "add", {"a": 1, "b": 2.5})["sum"] == 3.5
    count = loaded.functions["count"]
    items = asyncio.run(
        _collect(count.method(*count.call_args(count.validate_input({"n": 3}), None)))
    )
    assert [to_wire(i)["n"] for i in items] == [1, 2, 3]


def test_multi_default_setup_value() -> None:
    loaded = load_app(APPS / "multi")
    set_up(loaded, {})
    assert run(loaded, "run", {"name": "Bo"})["greeting"] == "Hello, Bo"


def test_invalid_setup_config_raises_validation_error() -> None:
    loaded = load_app(APPS / "multi")
    with pytest.raises(pydantic.ValidationError):
        loaded.setup_args({"greeting": 5}, metadata())


def test_app_is_imported_as_private_package_with_relative_imports() -> None:
    loaded = load_app(APPS / "multi")
    package = loaded.module.__name__.rpartition(".")[0]
    assert package.startswith("_app_multi_")
    assert package.isidentifier()
    assert loaded.module.__name__ == f"{package}.inference"
    assert f"{package}.helper" in sys.modules
    assert sys.modules[package].__path__ == [str(APPS / "multi")]
    assert loaded.app_dir == str(APPS / "multi")
    assert str(APPS / "multi") in sys.path


def test_loading_twice_gives_independent_modules() -> None:
    first = load_app(APPS / "multi")
    second = load_app(APPS / "multi")
    assert first.module is not second.module
    assert type(first.app) is not type(second.app)
    set_up(first, {"greeting": "One"})
    set_up(second, {"greeting": "Two"})
    assert run(first, "run", {"name": "x"})["greeting"] == "One, x"
    assert run(second, "run", {"name": "x"})["greeting"] == "Two, x"


def test_directory_name_that_is_not_an_identifier(tmp_path: Path) -> None:
    target = tmp_path / "my-app 2.0"
    shutil.copytree(APPS / "multi", target)
    (target / "inf.yml").unlink()
    loaded = load_app(target)
    assert loaded.name == "my-app 2.0"
    assert loaded.module.__name__.startswith("_app_my_app_2_0_")
    assert loaded.module.__name__.split(".")[0].isidentifier()
    set_up(loaded, {})
    assert run(loaded, "reverse", {"text": "ab", "shout": True})["text"] == "BA!"


def test_directory_without_init_still_allows_relative_imports(tmp_path: Path) -> None:
    app_dir = write_app(
        tmp_path / "noinit",
        {
            "util.py": "VALUE = 'relative'\n",
            "inference.py": """
                from pydantic import BaseModel
                from .util import VALUE

                class In(BaseModel):
                    x: int

                class Out(BaseModel):
                    value: str

                class App:
                    def run(self, data: In) -> Out:
                        return Out(value=VALUE)
            """,
        },
    )
    loaded = load_app(app_dir)
    assert run(loaded, "run", {"x": 1}) == {"value": "relative"}


def test_app_dir_is_on_sys_path_for_absolute_imports(tmp_path: Path) -> None:
    app_dir = write_app(
        tmp_path / "absimport",
        {
            "__init__.py": "",
            "appvisor_abs_helper_7f3a.py": "VALUE = 'absolute'\n",
            "inference.py": """
                import appvisor_abs_helper_7f3a
                from pydantic import BaseModel

                class In(BaseModel):
                    x: int = 0

                class Out(BaseModel):
                    value: str

                class App:
                    def run(self, data: In) -> Out:
                        return Out(value=appvisor_abs_helper_7f3a.VALUE)
            """,
        },
    )
    try:
        assert run(load_app(app_dir), "run", {}) == {"value": "absolute"}
    finally:
        sys.modules.pop("appvisor_abs_helper_7f3a", None)


def test_name_comes_from_inf_yml(tmp_path: Path) -> None:
    app_dir = write_app(
        tmp_path / "dir-name",
        {"inference.py": "class App:\n    pass\n", "inf.yml": "name: fancy-name\nkernel: x\n"},
    )
    assert load_app(app_dir).name == "fancy-name"


@pytest.mark.parametrize("text", ["name: [unclosed\n", "- a list\n", "name: 12\n", ""])
def test_unusable_inf_yml_falls_back_to_directory_name(tmp_path: Path, text: str) -> None:
    app_dir = write_app(
        tmp_path / "dirname", {"inference.py": "class App:\n    pass\n", "inf.yml": text}
    )
    assert load_app(app_dir).name == "dirname"


def test_plain_app() -> None:
    loaded = load_app(APPS / "plain")
    assert loaded.setup_model is None
    assert loaded.setup_args({"ignored": 1}, metadata()) == ()
    assert list(loaded.functions) == ["run"]
    assert loaded.functions["run"].kind == "sync"
    assert loaded.describe()["setup_schema"] is None
    set_up(loaded, {})
    assert run(loaded, "run", {"text": "hi"}) == {"text": "HI", "setup_called": True}


def test_files_app(tmp_path: Path) -> None:
    source = tmp_path / "input.png"
    source.write_bytes(b"\x89PNG-not-really")
    loaded = load_app(APPS / "files")
    set_up(loaded, {})
    try:
        output = run(loaded, "run", {"image": str(source)})
    finally:
        call(loaded.app.unload)
    assert output["input_size"] == len(b"\x89PNG-not-really")
    assert output["input_content_type"] == "image/png"
    assert output["input_path"] == str(source)
    result = output["result"]
    assert Path(result["path"]).is_absolute()
    assert result["uri"] == result["path"]
    assert result["size"] == len(b"\x89PNG-not-really")
    assert result["filename"] == "reversed-input.png"
    assert result["content_type"] == "image/png"


# -- load errors -----------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(AppLoadError, match="does not exist"):
        load_app(tmp_path / "nope")


def test_missing_inference_py(tmp_path: Path) -> None:
    with pytest.raises(AppLoadError, match=r"no inference\.py"):
        load_app(tmp_path)


def test_broken_import_is_chained_and_cleaned_up() -> None:
    before = set(sys.modules)
    with pytest.raises(AppLoadError, match="ImportError") as caught:
        load_app(APPS / "broken_import")
    assert isinstance(caught.value.__cause__, ImportError)
    assert not {m for m in set(sys.modules) - before if m.startswith("_app_")}
    assert str(APPS / "broken_import") not in sys.path


def test_no_app_class() -> None:
    with pytest.raises(AppLoadError, match="no App class"):
        load_app(APPS / "no_app_class")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def broken(:\n", SyntaxError),
        ("raise SystemExit(3)\n", SystemExit),
        ("raise RuntimeError('boom')\n", RuntimeError),
        ("App = 42\n", None),
    ],
)
def test_other_import_failures(
    tmp_path: Path, source: str, expected: type[BaseException] | None
) -> None:
    write_app(tmp_path / "bad", {"inference.py": source})
    with pytest.raises(AppLoadError) as caught:
        load_app(tmp_path / "bad")
    if expected is None:
        assert caught.value.__cause__ is None
    else:
        assert isinstance(caught.value.__cause__, expected)


def test_app_constructor_failure(tmp_path: Path) -> None:
    write_app(
        tmp_path / "ctor",
        {"inference.py": "class App:\n    def __init__(self):\n        raise ValueError('no')\n"},
    )
    with pytest.raises(AppLoadError, match="App\\(\\) failed: ValueError: no") as caught:
        load_app(tmp_path / "ctor")
    assert isinstance(caught.value.__cause__, ValueError)


# -- setup signatures ------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "config", "setup_received", "run_received", "greeting", "task_id"),
    [
        ("signatures_setup_none", {}, [], ["AppInput"], None, None),
        ("signatures_setup_metadata", {}, ["Metadata"], ["AppInput"], None, "t-1"),
        ("signatures_setup_config", {"greeting": "G"}, ["SetupConfig"], ["AppInput"], "G", None),
        ("signatures_setup_annotated", {"greeting": "A"}, ["AppSetup"], ["AppInput"], "A", None),
        ("signatures_setup_annotated", {}, ["AppSetup"], ["AppInput"], "Hi", None),
        (
            "signatures_setup_config_metadata",
            {},
            ["AppSetup", "Metadata"],
            ["AppInput"],
            "Hey",
            "t-1",
        ),
        ("signatures_run_metadata", {}, [], ["AppInput", "Metadata"], None, "t-2"),
    ],
)
def test_signature_apps(
    app: str,
    config: dict[str, Any],
    setup_received: list[str],
    run_received: list[str],
    greeting: str | None,
    task_id: str | None,
) -> None:
    loaded = load_app(APPS / app)
    set_up(loaded, config, task_id="t-1")
    output = run(loaded, "run", {"text": "x"}, task_id="t-2")
    assert output["setup_received"] == setup_received
    assert output["run_received"] == run_received
    assert output["greeting"] == greeting
    assert output["task_id"] == task_id


def test_run_metadata_app_logs_and_reports_progress() -> None:
    loaded = load_app(APPS / "signatures_run_metadata")
    set_up(loaded, {})
    logs: list[str] = []
    progress: list[dict[str, Any]] = []
    meta = make_metadata({"task_id": "t"}, logs.append, lambda **kw: progress.append(kw))
    fn = loaded.functions["run"]
    assert fn.wants_metadata
    call(fn.method, *fn.call_args(fn.validate_input({"log": "hello", "progress": 0.25}), meta))
    assert logs == ["hello"]
    assert progress == [{"fraction": 0.25, "message": "working", "current": None, "total": None}]


class _Cfg(BaseModel):
    size: int = 1


def _loaded(app: object, setup_model: type[BaseModel] | None = None) -> LoadedApp:
    return LoadedApp(
        name="t", app_dir="/", module=sys.modules[__name__], app=app, setup_model=setup_model
    )


def test_setup_args_rules() -> None:
    meta = metadata(task_id="m")

    class NoSetup:
        pass

    class Named:
        def setup(self, setup):  # type: ignore[no-untyped-def]
            pass

    class Other:
        def setup(self, anything):  # type: ignore[no-untyped-def]
            pass

    class AnnotatedModel:
        def setup(self, cfg: _Cfg) -> None:
            pass

    class ConfigAnnotatedMetadata:
        def setup(self, config: Metadata) -> None:
            pass

    class Two:
        def setup(self, a, b):  # type: ignore[no-untyped-def]
            pass

    class TwoAnnotated:
        def setup(self, a: _Cfg, b: Metadata) -> None:
            pass

    class VarArgs:
        def setup(self, *args: Any, **kwargs: Any) -> None:
            pass

    assert _loaded(NoSetup()).setup_args({}, meta) == ()
    assert _loaded(VarArgs()).setup_args({}, meta) == ()
    (named,) = _loaded(Named()).setup_args({"a": 1}, meta)
    assert isinstance(named, SetupConfig) and named == {"a": 1}
    assert _loaded(Other()).setup_args({"a": 1}, meta) == (meta,)
    (model,) = _loaded(AnnotatedModel()).setup_args({"size": 3}, meta)
    assert model == _Cfg(size=3)
    assert _loaded(ConfigAnnotatedMetadata()).setup_args({}, meta) == (meta,)
    config, passed = _loaded(Two()).setup_args({"k": "v"}, meta)
    assert isinstance(config, SetupConfig) and passed is meta
    config, passed = _loaded(TwoAnnotated()).setup_args({"size": 2}, meta)
    assert config == _Cfg(size=2) and passed is meta
    config, _ = _loaded(Two(), setup_model=_Cfg).setup_args({"size": 4}, meta)
    assert config == _Cfg(size=4)
    with pytest.raises(pydantic.ValidationError):
        _loaded(AnnotatedModel()).setup_args({"size": "big"}, meta)
    with pytest.raises(pydantic.ValidationError):
        _loaded(NoSetup(), setup_model=_Cfg).setup_args({"size": "big"}, meta)


def test_setup_config_reads_like_a_model_and_a_dict() -> None:
    config = SetupConfig({"model": {"name": "m"}, "steps": 3})
    assert config.steps == 3 and config["steps"] == 3 and config.get("missing") is None
    assert config.model.name == "m"
    assert getattr(config, "missing", "default") == "default"
    assert config.model_dump() == {"model": {"name": "m"}, "steps": 3}
    assert isinstance(config, dict)
