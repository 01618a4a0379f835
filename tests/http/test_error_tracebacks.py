"""An app's traceback over HTTP shows the app's frames; ``serve --debug`` shows them all."""

from __future__ import annotations

from pathlib import Path

from http_helpers import APPS, Server


def test_a_500_shows_the_apps_frames_only(multi: Server) -> None:
    response = multi.client.post("/apps/http_faults/run/boom", json={"input": {"text": "x"}})
    assert response.status_code == 500
    traceback = response.json()["error"]["traceback"]
    assert 'http_faults/inference.py", line' in traceback
    assert "RuntimeError: boom: x" in traceback
    assert "child/runtime.py" not in traceback
    assert "runtime frame hidden; --debug shows them" in traceback


def test_serve_debug_shows_the_runtimes_frames(tmp_path: Path) -> None:
    server = Server([str(APPS / "http_faults"), "--debug"], log=tmp_path / "server.log")
    try:
        server.wait_ready()
        response = server.client.post("/run/boom", json={"input": {"text": "x"}})
        traceback = response.json()["error"]["traceback"]
        assert "child/runtime.py" in traceback
        assert "hidden" not in traceback
    finally:
        server.stop()
