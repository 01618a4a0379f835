"""Event streams send ``: keep-alive`` comments while a request waits."""

from __future__ import annotations

from pathlib import Path

from http_helpers import APPS, Server, sse_events


def _raw_stream(server: Server, body: dict[str, object]) -> list[str]:
    with server.client.stream("POST", "/run/sleep", json=body) as response:
        assert response.status_code == 200
        return list(response.iter_lines())


def test_a_silent_stream_gets_keep_alive_comments(tmp_path: Path) -> None:
    server = Server(
        [str(APPS / "http_faults"), "--sse-keepalive", "0.2"], log=tmp_path / "server.log"
    )
    try:
        server.wait_ready()
        lines = _raw_stream(server, {"input": {"seconds": 1.2}, "stream": True})
        keepalives = [line for line in lines if line == ": keep-alive"]
        assert len(keepalives) >= 2, lines
        # Comments come between events, and clients still read the events whole.
        assert lines.index(": keep-alive") > lines.index("event: start")
        assert lines.index("event: result") > len(lines) - 4
        with server.client.stream(
            "POST", "/run/sleep", json={"input": {"seconds": 0.5}, "stream": True}
        ) as response:
            events = sse_events(response)
        assert [name for name, _ in events] == ["start", "result"]
        assert events[-1][1]["output"]["slept"] == 0.5
    finally:
        server.stop()


def test_keep_alive_can_be_turned_off(tmp_path: Path) -> None:
    server = Server([str(APPS / "http_faults"), "--sse-keepalive", "0"], log=tmp_path / "s.log")
    try:
        server.wait_ready()
        lines = _raw_stream(server, {"input": {"seconds": 0.6}, "stream": True})
        assert ": keep-alive" not in lines
        assert "event: result" in lines
    finally:
        server.stop()
