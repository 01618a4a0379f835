"""Outputs as JSON: what HTTP responses and ``supervisor run`` print."""

from __future__ import annotations

import base64
import json

import pytest

from supervisor.http import json_values
from supervisor.http.wire import dumps as http_dumps


def test_bytes_become_base64_and_text_stays_as_it_is() -> None:
    value = {"data": b"\x00\xffabc", "view": memoryview(b"xy"), "name": "Zoë", "n": [1, 2.5]}
    text = json_values.dumps(value)
    assert '"Zoë"' in text  # not escaped
    decoded = json.loads(text)
    assert base64.b64decode(decoded["data"]) == b"\x00\xffabc"
    assert base64.b64decode(decoded["view"]) == b"xy"
    assert decoded["n"] == [1, 2.5]


def test_http_responses_use_the_same_form() -> None:
    value = {"data": bytearray(b"\x01\x02"), "name": "Zoë"}
    assert http_dumps(value) == json_values.dumps(value).encode()


def test_a_value_json_has_no_form_for_is_refused() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        json_values.dumps({"s": {1, 2}})
