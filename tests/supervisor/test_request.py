"""Request ids and setup-config keys."""

from __future__ import annotations

from supervisor.core.request import config_key, new_request_id


def test_request_ids_are_32_random_hex_digits() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)


def test_config_keys_ignore_key_order() -> None:
    assert config_key({"a": 1, "b": [2]}) == config_key({"b": [2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})
