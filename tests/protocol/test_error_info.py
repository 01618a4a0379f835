"""The structured error map carried by ``error`` messages."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.error_info import ErrorInfo, ErrorType, FieldError
from protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError


def test_error_type_values_are_stable() -> None:
    """These strings are on the wire; changing one is a protocol version change."""
    assert {t.name: t.value for t in ErrorType} == {
        "VALIDATION": "validation",
        "SETUP_FAILED": "setup_failed",
        "LOAD_FAILED": "load_failed",
        "APP_EXCEPTION": "app_exception",
        "OUT_OF_MEMORY": "out_of_memory",
        "UNKNOWN_FUNCTION": "unknown_function",
        "CANCELLED": "cancelled",
        "PROTOCOL": "protocol",
    }


def test_error_classes() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


@pytest.mark.parametrize("error_type", list(ErrorType), ids=lambda t: t.value)
def test_minimal_round_trip(error_type: ErrorType) -> None:
    info = ErrorInfo(type=error_type, message=f"it was {error_type.value}")
    wire = info.to_wire()
    assert wire == {"type": error_type.value, "message": f"it was {error_type.value}"}
    assert ErrorInfo.from_wire(wire) == info


def test_full_round_trip() -> None:
    info = ErrorInfo(
        type=ErrorType.VALIDATION,
        message="2 validation errors",
        exception="pydantic_core.ValidationError",
        traceback="Traceback (most recent call last): ...",
        errors=(
            FieldError(loc=("input", "images", 2), msg="not an image", type="value_error"),
            FieldError(loc=(), msg="missing", type="missing"),
        ),
    )
    wire = info.to_wire()
    assert wire["errors"] == [
        {"loc": ["input", "images", 2], "msg": "not an image", "type": "value_error"},
        {"loc": [], "msg": "missing", "type": "missing"},
    ]
    assert wire["exception"] == "pydantic_core.ValidationError"
    assert ErrorInfo.from_wire(wire) == info


def test_field_error_to_wire() -> None:
    assert FieldError(loc=("a", 0), msg="m", type="t").to_wire() == {
        "loc": ["a", 0],
        "msg": "m",
        "type": "t",
    }


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            {"type": "protocol", "message": "m", "exception": None, "traceback": None},
            ErrorInfo(ErrorType.PROTOCOL, "m"),
        ),
        ({"type": "protocol", "message": "m", "errors": None}, ErrorInfo(ErrorType.PROTOCOL, "m")),
        ({"type": "protocol", "message": "m", "errors": []}, ErrorInfo(ErrorType.PROTOCOL, "m")),
        # Lenient reading of field errors: scalar loc, missing msg and type.
        (
            {"type": "validation", "message": "m", "errors": [{"loc": "text"}]},
            ErrorInfo(ErrorType.VALIDATION, "m", errors=(FieldError(("text",), "", ""),)),
        ),
        (
            {"type": "validation", "message": "m", "errors": [{"loc": 3, "msg": 1, "type": 2}]},
            ErrorInfo(ErrorType.VALIDATION, "m", errors=(FieldError(("3",), "1", "2"),)),
        ),
        # Unknown keys are ignored.
        ({"type": "cancelled", "message": "", "x": 1}, ErrorInfo(ErrorType.CANCELLED, "")),
    ],
)
def test_from_wire_accepts(wire: dict[str, Any], expected: ErrorInfo) -> None:
    assert ErrorInfo.from_wire(wire) == expected


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        ("cancelled", "error must be a map, got str"),
        ([{"type": "cancelled"}], "error must be a map, got list"),
        (None, "error must be a map, got NoneType"),
        ({"message": "m"}, "unknown error type None"),
        ({"type": "Cancelled", "message": "m"}, "unknown error type 'Cancelled'"),
        ({"type": "CANCELLED", "message": "m"}, "unknown error type 'CANCELLED'"),
        ({"type": ["cancelled"], "message": "m"}, "unknown error type"),
        ({"type": {"a": 1}, "message": "m"}, "unknown error type"),
        ({"type": "cancelled"}, "error.message must be a string"),
        ({"type": "cancelled", "message": b"m"}, "error.message must be a string"),
        ({"type": "cancelled", "message": "m", "exception": 1}, "error.exception must be a str"),
        ({"type": "cancelled", "message": "m", "traceback": b"t"}, "error.traceback must be a str"),
        ({"type": "validation", "message": "m", "errors": [1]}, "entries must be maps"),
        ({"type": "validation", "message": "m", "errors": [["loc"]]}, "entries must be maps"),
        ({"type": "validation", "message": "m", "errors": 5}, "error.errors must be a list"),
        ({"type": "validation", "message": "m", "errors": True}, "error.errors must be a list"),
        ({"type": "validation", "message": "m", "errors": 1.5}, "error.errors must be a list"),
        ({"type": "validation", "message": "m", "errors": "abc"}, "error.errors must be a list"),
        ({"type": "validation", "message": "m", "errors": {"loc": []}}, "errors must be a list"),
    ],
)
def test_from_wire_rejects(wire: Any, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        ErrorInfo.from_wire(wire)


# -- property-based -------------------------------------------------------------

FAST = settings(max_examples=200, deadline=None)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10,
)
# Mostly well-formed error maps, with any key possibly holding any value.
error_maps = st.fixed_dictionaries(
    {"type": st.sampled_from([t.value for t in ErrorType]) | values, "message": st.text() | values},
    optional={
        "exception": st.none() | st.text() | values,
        "traceback": st.none() | st.text() | values,
        "errors": st.sampled_from([0, 1, -2, 1.5, True, "abc", b"x", {"loc": []}])
        | values
        | st.lists(
            st.dictionaries(st.sampled_from(["loc", "msg", "type"]), values) | values, max_size=3
        ),
    },
)


@FAST
@given(error_maps)
def test_from_wire_only_raises_remote_protocol_error(wire: dict[str, Any]) -> None:
    try:
        info = ErrorInfo.from_wire(wire)
    except RemoteProtocolError as exc:
        assert str(exc)
    else:
        assert isinstance(info.type, ErrorType)
        assert isinstance(info.message, str)
        assert all(isinstance(e, FieldError) for e in info.errors)


@FAST
@given(
    st.builds(
        ErrorInfo,
        type=st.sampled_from(ErrorType),
        message=st.text(),
        exception=st.none() | st.text(),
        traceback=st.none() | st.text(),
        errors=st.lists(
            st.builds(
                FieldError,
                loc=st.lists(st.text(max_size=5) | st.integers(0, 9), max_size=3).map(tuple),
                msg=st.text(max_size=10),
                type=st.text(max_size=10),
            ),
            max_size=3,
        ).map(tuple),
    )
)
def test_round_trip_property(info: ErrorInfo) -> None:
    assert ErrorInfo.from_wire(info.to_wire()) == info
