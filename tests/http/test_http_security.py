"""``serve`` as a security boundary, tried as an attacker would: an app that echoes paths,
setup values naming files, fetches of internal URLs, processes that detach, /proc reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fetch_server import FetchServer, fetch_server
from http_helpers import APPS, Server, cli, running

APP = str(APPS / "security")


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def remote() -> Iterator[FetchServer]:
    with fetch_server() as started:
        yield started


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, allowed: Path, remote: FetchServer
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("security-server") / "server.log"
    args = [APP, "--allow-path", str(allowed), "--allow-fetch", f"127.0.0.1:{remote.port}"]
    with running(args, log=log) as started:
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


# -- files in ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "setup",
    [
        {"weights": "/etc/passwd"},
        {"weights": {"path": "/etc/passwd"}},
        {"weights": "file:///etc/passwd"},
        {"weights": {"uri": "/etc/passwd"}},
    ],
)
def test_setup_files_obey_allow_path(server: Server, setup: dict[str, object]) -> None:
    response = server.client.post("/run/read", json={"input": {}, "setup": setup})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["errors"][0]["loc"] == ["setup", "weights"]
    assert "root:" not in response.text


def test_setup_and_nested_files_under_allow_path_are_read(server: Server, allowed: Path) -> None:
    weights = allowed / "weights.bin"
    weights.write_text("weights")
    nested = allowed / "nested.txt"
    nested.write_text("nested")
    response = server.client.post(
        "/run/read",
        json={"input": {"nested": {"files": [str(nested)]}}, "setup": {"weights": str(weights)}},
    )
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert (output["content"], output["setup_content"]) == ("nested", "weights")
    refused = server.client.post(
        "/run/read", json={"input": {"nested": {"files": [str(nested), "/etc/passwd"]}}}
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["errors"][0]["loc"] == ["input", "nested", "files", 1]


# -- fetches ------------------------------------------------------------------------


def test_file_urls_are_fetched_by_the_server(server: Server, remote: FetchServer) -> None:
    url = f"{remote.url}/file/input.txt"
    weights = f"{remote.url}/file/weights.bin"
    for _ in range(2):
        response = server.client.post(
            "/run/read", json={"input": {"file": url}, "setup": {"weights": weights}}
        )
        assert response.status_code == 200, response.text
        output = response.json()["output"]
        assert output["content"] == "content of input.txt"
        assert output["setup_content"] == "content of weights.bin"
        assert output["path"].startswith("/") and output["path"].endswith("input.txt")
    assert remote.hits["/file/input.txt"] == 1, "the second request is served from the cache"
    assert remote.hits["/file/weights.bin"] == 1


def test_internal_urls_and_redirects_to_them_are_refused(
    server: Server, remote: FetchServer
) -> None:
    internal = f"{server.url}/metrics"
    for url in [
        internal,
        f"{remote.url}/redirect?to={internal}",
        f"http://localhost:{server.port}/",
    ]:
        response = server.client.post("/run/read", json={"input": {"file": url}})
        assert response.status_code == 422, response.text
        error = response.json()["error"]["errors"][0]
        assert (error["loc"], error["type"]) == (["input", "file"], "fetch_refused")
        assert "appvisor_" not in response.text
    setup = server.client.post("/run/read", json={"input": {}, "setup": {"weights": internal}})
    assert setup.status_code == 422
    assert setup.json()["error"]["errors"][0]["loc"] == ["setup", "weights"]


# -- the token and the child user on the command line ---------------------------------


def test_the_token_can_come_from_a_file_and_stays_off_the_command_line(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-456\n")
    log = tmp_path / "server.log"
    args = [APP, "--auth-token-file", str(token_file)]
    with running(args, token="file-token-456", log=log) as started:
        assert started.client.post("/run", json={"input": {}}).status_code == 200
        assert httpx.post(f"{started.url}/run", json={"input": {}}).status_code == 401
        cmdline = Path(f"/proc/{started.process.pid}/cmdline").read_bytes()
        assert b"file-token-456" not in cmdline
    assert "warning: --auth-token" not in log.read_text()


def test_a_token_on_the_command_line_is_warned_about(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running([APP, "--auth-token", "argv-token"], token="argv-token", log=log):
        pass
    assert "warning: --auth-token is visible to every local user" in log.read_text()


def test_an_unknown_child_user_is_a_usage_error() -> None:
    done = cli("serve", APP, "--child-user", "no-such-user-here")
    assert done.returncode == 2
    assert "no user named 'no-such-user-here'" in done.stderr
