"""Each error class says once how it reaches the HTTP and command-line faces
(``http_status``, ``exit_code``); the README's two tables must say the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from supervisor import errors as E
from supervisor.cli import exit_code_for
from supervisor.http.wire import status_for

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def all_error_classes() -> list[type[E.SupervisorError]]:
    found: list[type[E.SupervisorError]] = []
    todo = list(E.SupervisorError.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.type)


CLASSES = all_error_classes()


def table_row(first_cell: str) -> str:
    match = re.search(rf"^\| {re.escape(first_cell)} \|(.*)$", README, re.M)
    assert match, f"no README table row for {first_cell}"
    return match.group(1)


def test_every_error_type_is_distinct() -> None:
    types = [cls.type for cls in CLASSES]
    assert len(types) == len(set(types))
    assert len(CLASSES) >= 20


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.type)
def test_the_faces_follow_the_class(cls: type[E.SupervisorError]) -> None:
    error = cls("x")
    assert status_for(error) == cls.http_status
    assert exit_code_for(error) == cls.exit_code


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.type)
def test_the_readme_lists_each_type_under_its_status(cls: type[E.SupervisorError]) -> None:
    assert f"`{cls.type}`" in table_row(str(cls.http_status)), (
        f"README's HTTP table: {cls.type} should be under {cls.http_status}"
    )


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.type)
def test_the_readme_lists_each_type_under_its_exit_code(cls: type[E.SupervisorError]) -> None:
    assert f"`{cls.type}`" in table_row(str(int(cls.exit_code))), (
        f"README's exit codes: {cls.type} should be under {int(cls.exit_code)}"
    )
