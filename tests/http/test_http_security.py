"""``serve`` as a security boundary, tried as an attacker would: an app that echoes paths,
setup values naming files, fetches of internal URLs, processes that detach, /proc reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from http_helpers import APPS, Server, running

APP = str(APPS / "security")


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, allowed: Path) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("security-server") / "server.log"
    with running([APP, "--allow-path", str(allowed)], log=log) as started:
        yield started


# -- files out --------------------------------------------------------------------


def test_an_echoed_path_is_not_published(server: Server) -> None:
    response = server.client.post("/run", json={"input": {"data": {"path": "/etc/passwd"}}})
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["data"] == {"path": "/etc/passwd"}
    assert "/files/" not in response.text


def test_declared_output_files_are_published_and_special_files_are_not(server: Server) -> None:
    response = server.client.post("/run/make", json={"input": {"special": "/dev/zero"}})
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert server.client.get(output["main"]["uri"]).text == "main"
    assert server.client.get(output["bundle"]["files"][0]["uri"]).text == "inner"
    assert "uri" not in output["bundle"]["note"], "a dict in a plain field stays data"
    assert output["maybe"]["error"] == "output file not published: not a regular file"
