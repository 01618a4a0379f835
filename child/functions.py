"""Find the callable functions of an app instance, as inference.sh does.

A function is ``run`` (when the app class defines it) plus every public method whose
first parameter after ``self`` is annotated with a pydantic model, that takes at most
one more positional argument (the metadata), and whose return annotation is a model,
or an (async) generator/iterator of one for a streaming function. Annotations written
as strings (``from __future__ import annotations``) are resolved. For ``run`` alone a
missing input or output annotation falls back to the module's ``AppInput``/``AppOutput``
classes, the naming convention of inference.sh apps.
"""

from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from pydantic import BaseModel

from .wire_values import to_wire

FunctionKind = Literal["async", "sync", "async_gen", "sync_gen"]

RESERVED_METHODS = frozenset({"setup", "unload", "on_cancel"})
FUNCTION_META_ATTR = "__inferencesh_function__"
_ASYNC_ITERATORS = (cabc.AsyncGenerator, cabc.AsyncIterator, cabc.AsyncIterable)
_SYNC_ITERATORS = (cabc.Generator, cabc.Iterator, cabc.Iterable)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_SDK_MODULE_PREFIXES = ("inferencesh", "pydantic", "child.sdk_types")


@dataclass
class AppFunction:
    """A callable function of the app (``run`` or an extra one) with its models."""

    name: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None
    """None only for a ``run`` whose return type is not a model."""
    method: Callable[..., Any]
    wants_metadata: bool
    kind: FunctionKind
    """What calling ``method`` returns: an awaitable, a value, an async or a sync iterator."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def streaming(self) -> bool:
        return self.kind.endswith("_gen")

    @functools.cached_property
    def takes_files(self) -> bool:
        """Whether the input may hold SDK ``File`` values, whose validation may download."""
        return mentions_files(self.input_model)

    def describe(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "input_schema": model_schema(self.input_model),
            "output_schema": model_schema(self.output_model) if self.output_model else None,
            "streaming": self.streaming,
            "extra": self.extra,
        }

    def validate_input(self, data: dict[str, Any]) -> BaseModel:
        """The input model built from ``data``; raises pydantic.ValidationError.

        File fields are resolved here (data URIs decoded, URLs downloaded), so this may
        block on the network.
        """
        return self.input_model.model_validate(data)

    def call_args(self, input_obj: BaseModel, metadata: object) -> tuple[Any, ...]:
        return (input_obj, metadata) if self.wants_metadata else (input_obj,)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema; a model that cannot produce one gets a placeholder."""
    try:
        return model.model_json_schema()
    except Exception as exc:
        return {"title": model.__name__, "type": "object", "x-schema-error": str(exc)}


def is_model_type(hint: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def mentions_files(annotation: object, seen: set[type] | None = None) -> bool:
    """Whether ``annotation`` admits an SDK ``File`` (real or stand-in) at any depth:
    itself, inside a union or container, or in a field of a model.

    A walk over the types, not the JSON schema's ``"format": "file"``: generating a
    schema costs about 0.5 ms, on the first request of every child.
    """
    seen = set() if seen is None else seen
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        if annotation in seen:
            return False
        seen.add(annotation)
        if is_file_type(annotation):
            return True
        if issubclass(annotation, BaseModel):
            return any(mentions_files(f.annotation, seen) for f in annotation.model_fields.values())
    return any(mentions_files(arg, seen) for arg in typing.get_args(annotation))


def is_file_type(hint: type) -> bool:
    """True for the SDK's File (real or stand-in) and its subclasses."""
    return any(
        klass.__name__ == "File" and klass.__module__.startswith(_SDK_MODULE_PREFIXES)
        for klass in hint.__mro__
    )


def is_metadata_type(hint: object) -> bool:
    """True for the SDK's Metadata (real or stand-in) and its subclasses."""
    if not isinstance(hint, type):
        return False
    return any(
        klass.__name__ == "Metadata" and klass.__module__.startswith(_SDK_MODULE_PREFIXES)
        for klass in hint.__mro__
    )


def type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations of ``func``; a name that does not resolve is left out."""
    target = inspect.unwrap(getattr(func, "__func__", func))
    try:
        return typing.get_type_hints(target)
    except Exception:
        pass
    namespace = getattr(target, "__globals__", {})
    resolved: dict[str, Any] = {}
    for name, hint in getattr(target, "__annotations__", {}).items():
        if isinstance(hint, str):
            try:
                hint = eval(hint, namespace)
            except Exception:
                continue
        resolved[name] = hint
    return resolved


def positional_params(func: Callable[..., Any]) -> list[inspect.Parameter] | None:
    """The positional parameters of a bound method (``self`` excluded).

    None when the signature cannot be read or has a required keyword-only parameter,
    which no caller of an app function could fill.
    """
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params):
        return None
    return [p for p in params if p.kind in _POSITIONAL]


def _streamed_model(hint: Any) -> tuple[Any, Literal["async_gen", "sync_gen"] | None]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in _ASYNC_ITERATORS and args:
        return args[0], "async_gen"
    if origin in _SYNC_ITERATORS and args:
        return args[0], "sync_gen"
    return hint, None


def _kind(method: Callable[..., Any], annotated: FunctionKind | None) -> FunctionKind:
    candidates = [method, inspect.unwrap(getattr(method, "__func__", method))]
    for func in candidates:
        if inspect.isasyncgenfunction(func):
            return "async_gen"
        if inspect.isgeneratorfunction(func):
            return "sync_gen"
        if inspect.iscoroutinefunction(func):
            return "async"
    return annotated or "sync"


def _description(func: Callable[..., Any]) -> str:
    doc = inspect.unwrap(getattr(func, "__func__", func)).__doc__
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _extra(func: Callable[..., Any]) -> dict[str, Any]:
    meta = getattr(func, FUNCTION_META_ATTR, None)
    if not isinstance(meta, cabc.Mapping):
        return {}
    converted = to_wire(dict(meta))
    return converted if isinstance(converted, dict) else {}


def _module_model(app: object, name: str) -> type[BaseModel] | None:
    candidate = getattr(sys.modules.get(type(app).__module__), name, None)
    return candidate if is_model_type(candidate) else None


def _inspect_function(app: object, name: str) -> AppFunction | None:
    method = getattr(app, name, None)
    if not callable(method):
        return None
    params = positional_params(method)
    if not params or any(p.default is p.empty for p in params[2:]):
        return None
    hints = type_hints(method)
    input_model = hints.get(params[0].name)
    output_hint, annotated_kind = _streamed_model(hints.get("return"))
    if name == "run":
        if input_model is None:
            input_model = _module_model(app, "AppInput")
        if output_hint is None:
            output_hint = _module_model(app, "AppOutput")
    elif not is_model_type(output_hint):
        return None
    if not is_model_type(input_model) or is_metadata_type(input_model):
        return None
    return AppFunction(
        name=name,
        description=_description(method),
        input_model=input_model,
        output_model=output_hint if is_model_type(output_hint) else None,
        method=method,
        wants_metadata=len(params) >= 2,
        kind=_kind(method, annotated_kind),
        extra=_extra(method),
    )


def _candidate_names(cls: type) -> list[str]:
    """Public plain methods of the app class and its own bases, most derived first."""
    names: dict[str, None] = {}
    for klass in cls.__mro__:
        if klass is object or klass.__module__.startswith(_SDK_MODULE_PREFIXES):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in RESERVED_METHODS or hasattr(BaseModel, name):
                continue
            if inspect.isfunction(value):
                names.setdefault(name, None)
    return list(names)


def discover_functions(app: object) -> dict[str, AppFunction]:
    """The app's functions by name: ``run`` first, then in definition order."""
    names = _candidate_names(type(app))
    if "run" in names:
        names.remove("run")
        names.insert(0, "run")
    found: dict[str, AppFunction] = {}
    for name in names:
        function = _inspect_function(app, name)
        if function is not None:
            found[name] = function
    return found
