"""discover_functions finds an app's functions the way inference.sh does.

This module uses string annotations on purpose (``from __future__ import annotations``),
so every discovery here goes through annotation resolution.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import inferencesh
import msgpack
import pydantic
import pytest
from pydantic import BaseModel

from child import sdk_types
from child.functions import AppFunction, discover_functions, is_metadata_type

if TYPE_CHECKING:
    from decimal import Decimal as NotImportedAtRuntime


class In(BaseModel):
    text: str


class Out(BaseModel):
    text: str


class AppInput(BaseModel):
    value: int


class AppOutput(BaseModel):
    value: int


class Exhaustive(inferencesh.BaseApp):
    async def setup(self, config: In) -> Out:
        return Out(text="")

    async def unload(self, input: In) -> Out:
        return Out(text="")

    async def on_cancel(self, input: In) -> Out:
        return Out(text="")

    async def first(self, input: In) -> Out:
        """First function.

        Details:
            indented.
        """
        return Out(text=input.text)

    async def run(self, input: In, metadata: inferencesh.Metadata) -> Out:
        return Out(text=input.text)

    def _private(self, input: In) -> Out:
        return Out(text="")

    def json(self, input: In) -> Out:
        return Out(text="")

    def model_copy(self, input: In) -> Out:
        return Out(text="")

    def not_a_model_input(self, input: str) -> Out:
        return Out(text=input)

    def not_a_model_output(self, input: In) -> str:
        return input.text

    def no_annotations(self, input):  # type: ignore[no-untyped-def]
        return input

    def too_many_required(self, input: In, metadata: Any, third: Any) -> Out:
        return Out(text="")

    def optional_third(self, input: In, metadata: Any = None, third: int = 0) -> Out:
        return Out(text="")

    def required_keyword(self, input: In, *, flag: bool) -> Out:
        return Out(text="")

    def metadata_input(self, metadata: inferencesh.Metadata) -> Out:
        return Out(text="")

    def no_params(self) -> Out:
        return Out(text="")

    @staticmethod
    def static(input: In) -> Out:
        return Out(text="")

    @classmethod
    def klass(cls, input: In) -> Out:
        return Out(text="")

    @property
    def prop(self) -> Out:
        return Out(text="")

    async def stream_async(self, input: In) -> AsyncGenerator[Out, None]:
        yield Out(text=input.text)

    async def stream_async_iter(self, input: In) -> AsyncIterator[Out]:
        yield Out(text=input.text)

    def stream_sync(self, input: In) -> Generator[Out, None, None]:
        yield Out(text=input.text)

    def stream_sync_iter(self, input: In) -> Iterator[Out]:
        yield Out(text=input.text)

    def sync_plain(self, input: In, metadata: Any) -> Out:
        return Out(text=input.text)

    def unresolvable(self, input: In, extra: NotImportedAtRuntime = 0) -> Out:  # type: ignore[assignment]
        return Out(text=input.text)


def test_discovery_selects_and_orders_functions() -> None:
    functions = discover_functions(Exhaustive())
    assert list(functions) == [
        "run",
        "first",
        "optional_third",
        "stream_async",
        "stream_async_iter",
        "stream_sync",
        "stream_sync_iter",
        "sync_plain",
        "unresolvable",
    ]


def test_function_details() -> None:
    app = Exhaustive()
    functions = discover_functions(app)
    first = functions["first"]
    assert first.description == "First function.\n\nDetails:\n    indented."
    assert first.input_model is In and first.output_model is Out
    assert first.kind == "async" and not first.wants_metadata
    assert first.method == app.first
    assert functions["run"].wants_metadata
    assert functions["run"].description == ""
    assert functions["optional_third"].wants_metadata
    assert functions["sync_plain"].kind == "sync"
    assert functions["unresolvable"].input_model is In


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("stream_async", "async_gen"),
        ("stream_async_iter", "async_gen"),
        ("stream_sync", "sync_gen"),
        ("stream_sync_iter", "sync_gen"),
    ],
)
def test_generators(name: str, kind: str) -> None:
    fn = discover_functions(Exhaustive())[name]
    assert fn.kind == kind
    assert fn.output_model is Out
    described = fn.describe()
    assert described["streaming"] is True
    assert described["output_schema"] == Out.model_json_schema()


def test_describe_shape_and_msgpack_safety() -> None:
    described = discover_functions(Exhaustive())["first"].describe()
    assert described == {
        "description": "First function.\n\nDetails:\n    indented.",
        "input_schema": In.model_json_schema(),
        "output_schema": Out.model_json_schema(),
        "streaming": False,
        "extra": {},
    }
    msgpack.packb(described, use_bin_type=True)


def test_call_args_and_validate_input() -> None:
    functions = discover_functions(Exhaustive())
    data = functions["first"].validate_input({"text": "a"})
    assert data == In(text="a")
    assert functions["first"].call_args(data, "meta") == (data,)
    assert functions["run"].call_args(data, "meta") == (data, "meta")
    with pytest.raises(pydantic.ValidationError):
        functions["first"].validate_input({"text": 1})
    with pytest.raises(pydantic.ValidationError):
        functions["first"].validate_input({})


def test_run_only_when_overridden() -> None:
    class Sdk(inferencesh.BaseApp):
        async def other(self, input: In) -> Out:
            return Out(text="")

    class Fallback(sdk_types.BaseApp):
        async def other(self, input: In) -> Out:
            return Out(text="")

    assert list(discover_functions(Sdk())) == ["other"]
    assert list(discover_functions(Fallback())) == ["other"]


class UnannotatedRun:
    def run(self, input_data, metadata):  # type: ignore[no-untyped-def]
        return AppOutput(value=input_data.value)


def test_unannotated_run_uses_module_app_input_and_output() -> None:
    fn = discover_functions(UnannotatedRun())["run"]
    assert fn.input_model is AppInput
    assert fn.output_model is AppOutput
    assert fn.wants_metadata


class RunReturnsDict:
    def run(self, data: In) -> dict[str, str]:
        return {"text": data.text}


def test_run_without_model_output_is_kept() -> None:
    fn = discover_functions(RunReturnsDict())["run"]
    assert fn.output_model is None
    assert fn.describe()["output_schema"] is None


class PlainBase:
    def inherited(self, data: In) -> Out:
        return Out(text="base")

    def overridden(self, data: In) -> Out:
        return Out(text="base")


class PlainChild(PlainBase):
    def run(self, data: In) -> Out:
        return Out(text="")

    def overridden(self, data: In) -> Out:
        return Out(text="child")


def test_plain_class_with_inheritance() -> None:
    app = PlainChild()
    functions = discover_functions(app)
    assert list(functions) == ["run", "overridden", "inherited"]
    assert functions["overridden"].method(In(text="")).text == "child"


def _passthrough(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


class Decorated(inferencesh.BaseApp):
    @inferencesh.function(annotations={"readOnlyHint": True, "title": "Look"})
    async def real_sdk(self, data: In) -> Out:
        return Out(text="")

    @sdk_types.function(credentials=["slack"], tags=("a", "b"), skipped=None)
    async def fallback_sdk(self, data: In) -> Out:
        return Out(text="")

    @_passthrough
    async def wrapped(self, data: In) -> Out:
        """Wrapped doc."""
        return Out(text=data.text)


def test_decorator_extra() -> None:
    functions = discover_functions(Decorated())
    assert functions["real_sdk"].extra == {"annotations": {"readOnlyHint": True, "title": "Look"}}
    assert functions["fallback_sdk"].extra == {"credentials": ["slack"], "tags": ["a", "b"]}
    msgpack.packb(functions["fallback_sdk"].describe(), use_bin_type=True)


def test_wrapped_function_is_seen_through() -> None:
    fn = discover_functions(Decorated())["wrapped"]
    assert fn.kind == "async"
    assert fn.description == "Wrapped doc."
    assert asyncio.run(fn.method(In(text="w"))) == Out(text="w")


def test_is_metadata_type() -> None:
    assert is_metadata_type(inferencesh.Metadata)
    assert is_metadata_type(sdk_types.Metadata)

    class Sub(inferencesh.Metadata):
        pass

    assert is_metadata_type(Sub)
    assert not is_metadata_type(In)
    assert not is_metadata_type(None)


class Broken(BaseModel):
    value: Any

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("no schema")


def test_schema_failure_does_not_break_describe() -> None:
    fn = AppFunction(
        name="f",
        description="",
        input_model=Broken,
        output_model=None,
        method=lambda data: data,
        wants_metadata=False,
        kind="sync",
    )
    assert fn.describe()["input_schema"] == {
        "title": "Broken",
        "type": "object",
        "x-schema-error": "no schema",
    }


class _Plain(BaseModel):
    text: str
    scores: list[float] = []
    choice: Literal["a", "b"] = "a"
    anything: Any = None
    nested: dict[str, list[tuple[int, str]]] = {}
    kind: type[BaseModel] | None = None


class _WithFile(BaseModel):
    image: sdk_types.File


class _OptionalFile(BaseModel):
    image: sdk_types.File | None = None


class _FileList(BaseModel):
    images: list[sdk_types.File] = []


class _FileMap(BaseModel):
    images: dict[str, Optional[sdk_types.File]] = {}  # noqa: UP045


class _AnnotatedFile(BaseModel):
    image: Annotated[sdk_types.File, pydantic.Field(description="an image")]


class _Nested(BaseModel):
    inner: _FileList


class _SubFile(sdk_types.File):
    pass


class _WithSubFile(BaseModel):
    image: _SubFile


class _SdkFile(BaseModel):
    image: inferencesh.File


class _Node(BaseModel):
    name: str
    children: list[_Node] = []


class _NodeWithFile(BaseModel):
    children: list[_NodeWithFile] = []
    image: sdk_types.File | None = None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (_Plain, False),
        (_Node, False),
        (_WithFile, True),
        (_OptionalFile, True),
        (_FileList, True),
        (_FileMap, True),
        (_AnnotatedFile, True),
        (_Nested, True),
        (_WithSubFile, True),
        (_SdkFile, True),
        (_NodeWithFile, True),
    ],
)
def test_takes_files_agrees_with_the_json_schema(model: type[BaseModel], expected: bool) -> None:
    """The type walk finds File fields exactly where the schema says ``format: file``."""
    function = AppFunction("f", "", model, None, lambda _: None, False, "async")
    in_schema = '"format": "file"' in json.dumps(model.model_json_schema())
    assert in_schema is expected
    assert function.takes_files is expected
