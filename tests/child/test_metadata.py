"""make_metadata builds an SDK Metadata whose log and progress reach the runtime."""

from __future__ import annotations

import math
import sys
from typing import Any

import inferencesh
import pydantic
import pytest

from child import sdk_fallback, sdk_types
from child.metadata import make_metadata, metadata_class


class Recorder:
    def __init__(self) -> None:
        self.logs: list[str] = []
        self.progress: list[dict[str, Any]] = []

    def log(self, message: str) -> None:
        self.logs.append(message)

    def report(self, **kwargs: Any) -> None:
        self.progress.append(kwargs)

    def make(self, **fields: Any) -> Any:
        return make_metadata(fields, self.log, self.report)


def test_is_an_sdk_metadata_with_the_fields() -> None:
    meta = Recorder().make(task_id="t", app_id="a", gpu_ids=["0"], custom={"k": 1})
    assert isinstance(meta, inferencesh.Metadata)
    assert (meta.task_id, meta.app_id, meta.gpu_ids, meta.custom) == ("t", "a", ["0"], {"k": 1})
    assert meta.user_id is None


def test_callbacks_stay_out_of_the_dump() -> None:
    dumped = Recorder().make(task_id="t").model_dump()
    assert dumped == {
        "app_id": None,
        "app_version_id": None,
        "worker_id": None,
        "gpu_ids": None,
        "task_id": "t",
        "team_id": None,
        "user_id": None,
    }


def test_log() -> None:
    recorder = Recorder()
    meta = recorder.make()
    meta.log("hello")
    meta.log(42)
    assert recorder.logs == ["hello", "42"]


def test_progress_fraction_and_message() -> None:
    recorder = Recorder()
    meta = recorder.make()
    meta.progress(0.5)
    meta.progress(1, "done")
    meta.progress(message="only a message")
    assert recorder.progress == [
        {"fraction": 0.5, "message": None, "current": None, "total": None},
        {"fraction": 1.0, "message": "done", "current": None, "total": None},
        {"fraction": None, "message": "only a message", "current": None, "total": None},
    ]


def test_progress_current_of_total() -> None:
    recorder = Recorder()
    meta = recorder.make()
    meta.progress(current=3, total=4)
    meta.progress(current=5, total=4, message="overshoot")
    meta.progress(current=2)
    assert recorder.progress == [
        {"fraction": 0.75, "message": None, "current": 3.0, "total": 4.0},
        {"fraction": 1.0, "message": "overshoot", "current": 5.0, "total": 4.0},
        {"fraction": None, "message": None, "current": 2.0, "total": None},
    ]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"fraction": 1.5}, ValueError),
        ({"fraction": -0.1}, ValueError),
        ({"fraction": math.nan}, ValueError),
        ({"fraction": "half"}, TypeError),
        ({"fraction": True}, TypeError),
        ({"current": -1, "total": 2}, ValueError),
        ({"current": 1, "total": 0}, ValueError),
    ],
)
def test_progress_validation(kwargs: dict[str, Any], error: type[Exception]) -> None:
    recorder = Recorder()
    with pytest.raises(error):
        recorder.make().progress(**kwargs)
    assert recorder.progress == []


def test_gpu_ids_become_strings() -> None:
    assert Recorder().make(gpu_ids=[0, 1]).gpu_ids == ["0", "1"]


def test_wrong_field_type_is_a_validation_error() -> None:
    with pytest.raises(pydantic.ValidationError):
        Recorder().make(task_id=["not", "a", "string"])


def test_update_still_works() -> None:
    meta = Recorder().make(task_id="t")
    meta.update({"task_id": "u"})
    assert meta.task_id == "u"


def test_class_is_cached_per_base() -> None:
    first, second = Recorder().make(), Recorder().make()
    assert type(first) is type(second)
    assert metadata_class(inferencesh.Metadata) is type(first)
    assert metadata_class(sdk_types.Metadata) is not type(first)


def test_uses_the_fallback_sdk_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "inferencesh", sdk_fallback.build_module())
    meta = Recorder().make(task_id="t")
    assert isinstance(meta, sdk_types.Metadata)
    assert not isinstance(meta, inferencesh.Metadata)


def test_uses_the_stand_in_class_when_no_sdk_was_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "inferencesh")
    recorder = Recorder()
    meta = recorder.make(task_id="t")
    assert isinstance(meta, sdk_types.Metadata)
    meta.log("x")
    assert recorder.logs == ["x"]
    assert "inferencesh" not in sys.modules
