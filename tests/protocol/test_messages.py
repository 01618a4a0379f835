"""Encoding and decoding of every message: shapes, types, defaults and garbage."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.error_info import ErrorInfo, ErrorType, FieldError
from protocol.errors import RemoteProtocolError

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

APP = {
    "name": "echo",
    "functions": {
        "echo": {
            "description": "Echo the input.",
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
            "output_schema": {"type": "object"},
            "streaming": False,
            "extra": {},
        }
    },
    "setup_schema": None,
}

# One instance of every message type, with every field set to a non-default value.
SAMPLES: list[m.Message] = [
    m.Load(id="l1", app_dir="/apps/echo", env={"HF_HOME": "/cache", "EMPTY": ""}, describe=False),
    m.Setup(id="s1", config={"model": "tiny", "fp16": True}, metadata={"trace": "abc"}),
    m.Run(id="r1", function="echo", input={"text": "hi", "n": 3}, metadata={"user": 7}),
    m.Check(id="k1", config={"model": "tiny"}),
    m.Cancel(id="r1"),
    m.Unload(),
    m.Shutdown(),
    m.Ping(seq=2**40),
    m.Hello(protocol_version=m.PROTOCOL_VERSION, pid=4242, runtime_version="0.1.0", app=APP),
    m.Log(id="r1", stream="stdout", message="héllo wörld\n"),
    m.Progress(id="r1", fraction=0.25, current=1, total=4.0, message="step 1/4"),
    m.Partial(id="r1", output={"token": "hi", "raw": b"\x00\xff"}),
    m.Result(id="r1", output=[1, 2.5, None, True, "x", b"y", {"z": []}]),
    m.Release(upto=2**33),
    m.Error(
        id="r1",
        error=ErrorInfo(
            type=ErrorType.VALIDATION,
            message="bad input",
            exception="pydantic.ValidationError",
            traceback="Traceback ...",
            errors=(
                FieldError(loc=("input", "text", 0), msg="too short", type="string_too_short"),
            ),
        ),
    ),
    m.Unloaded(),
    m.Pong(seq=0),
]


def sample_id(message: m.Message) -> str:
    return message.TYPE


def test_samples_cover_every_message_type() -> None:
    assert sorted(s.TYPE for s in SAMPLES) == sorted(m.MESSAGE_TYPES)


def test_message_types_registry() -> None:
    assert len(m.MESSAGE_TYPES) == 17
    for name, cls in m.MESSAGE_TYPES.items():
        assert name == cls.TYPE
    to_child = {name for name, cls in m.MESSAGE_TYPES.items() if cls.TO_CHILD}
    assert to_child == {"load", "setup", "run", "check", "cancel", "unload", "shutdown", "ping"}
    assert {name for name, cls in m.MESSAGE_TYPES.items() if cls.BOTH_WAYS} == {"release"}
    assert set(m.REQUESTS) == {m.Load, m.Setup, m.Run, m.Check}


@pytest.mark.parametrize("message", SAMPLES, ids=sample_id)
def test_round_trip(message: m.Message) -> None:
    decoded = m.decode(m.encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", SAMPLES, ids=sample_id)
def test_wire_shape(message: m.Message) -> None:
    """One map: the type first, then every field under its own name."""
    wire = msgpack.unpackb(m.encode(message), raw=False)
    assert isinstance(wire, dict)
    keys = list(wire)
    assert keys[0] == "type"
    assert wire["type"] == message.TYPE
    assert keys[1:] == [f.name for f in dataclasses.fields(message)]


def test_bytes_travel_as_bin_and_text_as_str() -> None:
    payload = m.encode(m.Result(id="r", output={"img": b"\x89PNG", "caption": "cat"}))
    assert b"\xc4\x04\x89PNG" in payload  # bin8, length 4
    assert b"\xa3cat" in payload  # fixstr, length 3
    wire = msgpack.unpackb(payload, raw=True)  # raw: str arrives as bytes, bin as bytes too
    assert wire[b"output"][b"img"] == b"\x89PNG"
    decoded = m.decode(payload)
    assert isinstance(decoded, m.Result)
    assert decoded.output == {"img": b"\x89PNG", "caption": "cat"}
    assert isinstance(decoded.output["img"], bytes)
    assert isinstance(decoded.output["caption"], str)


def test_ping_bytes() -> None:
    assert m.encode(m.Ping(seq=1)).hex() == "82a474797065a470696e67a373657101"


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            {"type": "load", "id": "a", "app_dir": "/x"},
            m.Load(id="a", app_dir="/x", env={}, describe=True),
        ),
        ({"type": "setup", "id": "s"}, m.Setup(id="s", config={}, metadata={})),
        (
            {"type": "run", "id": "r", "function": "f", "input": {}},
            m.Run(id="r", function="f", input={}, metadata={}),
        ),
        (
            {"type": "hello", "protocol_version": 1, "pid": 1, "runtime_version": "v"},
            m.Hello(protocol_version=1, pid=1, runtime_version="v", app=None),
        ),
        ({"type": "progress", "id": "r"}, m.Progress(id="r")),
        ({"type": "result", "id": "r"}, m.Result(id="r", output=None)),
        ({"type": "unload"}, m.Unload()),
        # Nullable fields accept nil explicitly.
        (
            {"type": "hello", "protocol_version": 1, "pid": 1, "runtime_version": "v", "app": None},
            m.Hello(protocol_version=1, pid=1, runtime_version="v"),
        ),
        ({"type": "log", "id": None, "stream": "log", "message": ""}, m.Log(None, "log", "")),
        ({"type": "progress", "id": "r", "fraction": None}, m.Progress(id="r")),
        # float fields accept ints; unknown keys are ignored.
        ({"type": "progress", "id": "r", "current": 3}, m.Progress(id="r", current=3)),
        ({"type": "ping", "seq": 5, "extra_key": [1, 2]}, m.Ping(seq=5)),
    ],
)
def test_optional_fields_and_defaults(wire: dict[str, Any], expected: m.Message) -> None:
    assert m.decode(msgpack.packb(wire)) == expected


def test_float32_accepted() -> None:
    payload = msgpack.packb({"type": "progress", "id": "r", "fraction": 0.5}, use_single_float=True)
    assert b"\xca" in payload  # float32 marker
    assert m.decode(payload) == m.Progress(id="r", fraction=0.5)


def test_unknown_error_type_is_protocol_error() -> None:
    wire = {"type": "error", "id": None, "error": {"type": "weird", "message": "m"}}
    with pytest.raises(RemoteProtocolError, match="unknown error type 'weird'"):
        m.decode(msgpack.packb(wire))


# -- rejected shapes ------------------------------------------------------------

HELLO = {"type": "hello", "protocol_version": 1, "pid": 1, "runtime_version": "v"}


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        ({"type": "ping", "seq": "1"}, r"ping\.seq must be int, got str"),
        ({"type": "ping", "seq": 1.0}, r"ping\.seq must be int, got float"),
        ({"type": "ping", "seq": None}, r"ping\.seq must be int, got NoneType"),
        ({"type": "pong", "seq": [1]}, r"pong\.seq must be int, got list"),
        ({**HELLO, "pid": True}, r"hello\.pid must be int, got bool"),
        ({**HELLO, "protocol_version": False}, r"hello\.protocol_version must be int, got bool"),
        ({**HELLO, "runtime_version": 1}, r"hello\.runtime_version must be str, got int"),
        ({**HELLO, "app": [APP]}, r"hello\.app must be dict or NoneType, got list"),
        ({**HELLO, "app": "echo"}, r"hello\.app must be dict or NoneType, got str"),
        ({"type": "progress", "id": "r", "fraction": True}, r"progress\.fraction must be"),
        ({"type": "progress", "id": "r", "total": "4"}, r"progress\.total must be"),
        ({"type": "progress", "id": "r", "message": 3}, r"progress\.message must be str or"),
        ({"type": "progress", "id": 1}, r"progress\.id must be str, got int"),
        ({"type": "run", "id": "r", "function": "f", "input": []}, r"run\.input must be dict"),
        ({"type": "run", "id": "r", "function": "f", "input": None}, r"run\.input must be dict"),
        ({"type": "run", "id": "r", "function": 1, "input": {}}, r"run\.function must be str"),
        (
            {"type": "run", "id": "r", "function": "f", "input": {}, "metadata": None},
            r"run\.metadata must be dict, got NoneType",
        ),
        ({"type": "load", "id": "a", "app_dir": b"/x"}, r"load\.app_dir must be str, got bytes"),
        ({"type": "load", "id": "a", "app_dir": "/x", "env": None}, r"load\.env must be dict"),
        (
            {"type": "load", "id": "a", "app_dir": "/x", "describe": 1},
            r"load\.describe must be bool",
        ),
        ({"type": "setup", "id": "s", "config": "x"}, r"setup\.config must be dict"),
        ({"type": "log", "id": 1, "stream": "x", "message": "m"}, r"log\.id must be str or"),
        ({"type": "log", "id": None, "stream": b"x", "message": "m"}, r"log\.stream must be str"),
        ({"type": "cancel", "id": None}, r"cancel\.id must be str, got NoneType"),
        ({"type": "result", "id": b"r"}, r"result\.id must be str, got bytes"),
        ({"type": "partial", "id": ["r"], "output": 1}, r"partial\.id must be str"),
        ({"type": "error", "id": "r", "error": "boom"}, r"error must be a map, got str"),
        ({"type": "error", "id": "r", "error": None}, r"error must be a map, got NoneType"),
        ({"type": "error", "id": 3, "error": {"type": "protocol", "message": "m"}}, r"error\.id"),
        (
            {"type": "error", "id": "r", "error": {"type": "nope", "message": "m"}},
            r"unknown error type 'nope'",
        ),
    ],
)
def test_wrong_field_types(wire: dict[str, Any], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        m.decode(msgpack.packb(wire))


def _required_fields() -> list[tuple[str, str]]:
    cases = []
    for name, cls in m.MESSAGE_TYPES.items():
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                cases.append((name, f.name))
    return cases


REQUIRED = _required_fields()


def test_required_fields_table() -> None:
    """Pin the required fields, so that making one optional is a visible decision."""
    assert sorted(REQUIRED) == sorted(
        [
            ("load", "id"), ("load", "app_dir"),
            ("setup", "id"),
            ("run", "id"), ("run", "function"), ("run", "input"),
            ("check", "id"),
            ("cancel", "id"),
            ("ping", "seq"),
            ("hello", "protocol_version"), ("hello", "pid"), ("hello", "runtime_version"),
            ("log", "id"), ("log", "stream"), ("log", "message"),
            ("progress", "id"),
            ("partial", "id"), ("partial", "output"),
            ("release", "upto"),
            ("result", "id"),
            ("error", "id"), ("error", "error"),
            ("pong", "seq"),
        ]
    )  # fmt: skip


@pytest.mark.parametrize(("type_name", "field_name"), REQUIRED)
def test_missing_required_field(type_name: str, field_name: str) -> None:
    sample = next(s for s in SAMPLES if type_name == s.TYPE)
    wire = msgpack.unpackb(m.encode(sample), raw=False)
    del wire[field_name]
    with pytest.raises(
        RemoteProtocolError, match=f"{type_name} message lacks field '{field_name}'"
    ):
        m.decode(msgpack.packb(wire))


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        ({"type": "pang"}, "unknown message type 'pang'"),
        ({"type": "PING", "seq": 1}, "unknown message type 'PING'"),
        ({"type": 1}, "unknown message type 1"),
        ({"type": None}, "unknown message type None"),
        ({"type": b"ping", "seq": 1}, r"unknown message type b'ping'"),
        ({"seq": 1}, "unknown message type None"),
        ({}, "unknown message type None"),
        ({"type": "Message"}, "unknown message type 'Message'"),
        ({"type": ""}, "unknown message type ''"),
    ],
)
def test_unknown_type(wire: dict[str, Any], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        m.decode(msgpack.packb(wire))


@pytest.mark.parametrize(
    ("value", "kind"),
    [([1, 2], "list"), (["type", "ping"], "list"), ("ping", "str"), (None, "NoneType"),
     (7, "int"), (1.5, "float"), (True, "bool"), (b"\x82", "bytes")],
)  # fmt: skip
def test_non_map_payload(value: Any, kind: str) -> None:
    with pytest.raises(RemoteProtocolError, match=f"message must be a map, got {kind}"):
        m.decode(msgpack.packb(value))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # the one byte msgpack never uses
        b"\x82\xa4type",  # truncated map
        m.encode(m.Ping(seq=1)) + b"\x00",  # trailing data
        m.encode(m.Ping(seq=1))[:-1],
        b"\x81\x91\x01\x02",  # a map whose key is an array
        msgpack.packb({"type": "result", "id": "r", "output": {1: "one"}}),  # int key, nested
    ],
)
def test_invalid_msgpack(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        m.decode(payload)


def test_unencodable_value_raises_type_error() -> None:
    with pytest.raises(TypeError, match="cannot encode run message"):
        m.encode(m.Run(id="r", function="f", input={"x": object()}))
    with pytest.raises(TypeError, match="cannot encode ping message"):
        m.encode(m.Ping(seq=2**64))


# -- property-based -------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
maps = st.dictionaries(st.text(max_size=10), values, max_size=5)
ids = st.text(max_size=12)
optional_floats = st.none() | st.floats(allow_nan=False) | st.integers(-(2**53), 2**53)
seqs = st.integers(min_value=-(2**63), max_value=2**64 - 1)
field_errors = st.builds(
    FieldError,
    loc=st.lists(st.text(max_size=5) | st.integers(0, 100), max_size=4).map(tuple),
    msg=st.text(max_size=20),
    type=st.text(max_size=10),
)
error_infos = st.builds(
    ErrorInfo,
    type=st.sampled_from(ErrorType),
    message=st.text(max_size=30),
    exception=st.none() | st.text(max_size=20),
    traceback=st.none() | st.text(max_size=50),
    errors=st.lists(field_errors, max_size=3).map(tuple),
)

any_message = st.one_of(
    st.builds(m.Load, id=ids, app_dir=st.text(), env=st.dictionaries(st.text(), st.text())),
    st.builds(m.Setup, id=ids, config=maps, metadata=maps),
    st.builds(m.Run, id=ids, function=st.text(), input=maps, metadata=maps),
    st.builds(m.Cancel, id=ids),
    st.just(m.Unload()),
    st.just(m.Shutdown()),
    st.builds(m.Ping, seq=seqs),
    st.builds(
        m.Hello,
        protocol_version=st.integers(-(2**31), 2**31),
        pid=st.integers(0, 2**22),
        runtime_version=st.text(),
        app=st.none() | maps,
    ),
    st.builds(m.Log, id=st.none() | ids, stream=st.sampled_from(["stdout", "stderr", "log"]),
              message=st.text()),
    st.builds(m.Progress, id=ids, fraction=optional_floats, current=optional_floats,
              total=optional_floats, message=st.none() | st.text()),
    st.builds(m.Partial, id=ids, output=values),
    st.builds(m.Result, id=ids, output=values),
    st.builds(m.Error, id=st.none() | ids, error=error_infos),
    st.just(m.Unloaded()),
    st.builds(m.Pong, seq=seqs),
)  # fmt: skip


def normalise(value: Any) -> Any:
    """msgpack has no tuples: compare with tuples turned into lists."""
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


@FAST
@given(any_message)
def test_round_trip_property(message: m.Message) -> None:
    decoded = m.decode(m.encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


@FAST
@given(values)
def test_nested_values_round_trip_in_run_input_and_result_output(value: Any) -> None:
    run = m.decode(m.encode(m.Run(id="r", function="f", input={"v": value, "b": b"\x00"})))
    assert isinstance(run, m.Run)
    assert run.input == {"v": normalise(value), "b": b"\x00"}
    result = m.decode(m.encode(m.Result(id="r", output=value)))
    assert isinstance(result, m.Result)
    assert result.output == normalise(value)


def test_floats_keep_their_bits() -> None:
    for value in (0.1, -0.0, math.inf, -math.inf, 5e-324, 1.7976931348623157e308):
        decoded = m.decode(m.encode(m.Result(id="r", output=value)))
        assert isinstance(decoded, m.Result)
        assert math.copysign(1, decoded.output) == math.copysign(1, value)
        assert decoded.output == value


def _check_decode(payload: bytes) -> None:
    try:
        message = m.decode(payload)
    except RemoteProtocolError as exc:
        assert str(exc)  # a message for the logs, never empty
    else:
        assert isinstance(message, m.Message)
        assert type(message) is m.MESSAGE_TYPES[message.TYPE]


@FAST
@given(st.binary(max_size=200))
def test_garbage_only_raises_remote_protocol_error(payload: bytes) -> None:
    _check_decode(payload)


@FAST
@given(values)
def test_arbitrary_msgpack_only_raises_remote_protocol_error(value: Any) -> None:
    _check_decode(msgpack.packb(value))


def _field_names() -> list[str]:
    return sorted({f.name for cls in m.MESSAGE_TYPES.values() for f in dataclasses.fields(cls)})


# Maps that look like messages: a real type, real field names, random values. These get
# past the type lookup and exercise the per-field checks and ErrorInfo.from_wire.
error_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([t.value for t in ErrorType]) | values,
        "message": st.text(max_size=5) | values,
        "exception": st.none() | st.text(max_size=5) | values,
        "traceback": st.none() | values,
        "errors": st.sampled_from([0, 1, 1.5, True, "abc", b"x"])
        | values
        | st.lists(st.dictionaries(st.sampled_from(["loc", "msg", "type"]), values), max_size=3),
    },
)
message_like = st.builds(
    lambda name, fields: {"type": name, **fields},
    st.sampled_from(sorted(m.MESSAGE_TYPES)),
    st.dictionaries(st.sampled_from(_field_names()), values | error_like, max_size=6),
)


@FAST
@given(message_like)
def test_message_like_maps_only_raise_remote_protocol_error(wire: dict[str, Any]) -> None:
    _check_decode(msgpack.packb(wire))
