"""``/status`` (what the status page polls) and the recent-logs buffer behind it."""

from __future__ import annotations

import logging

from http_helpers import Server

from supervisor.http.recent_logs import RecentLogs
from supervisor.http.request_log import failure_record, log_failure


def test_status_has_every_app_its_replicas_gpus_and_logs(hello: Server) -> None:
    hello.client.post("/run", json={"input": {"name": 3}})  # a failure, for the logs
    body = hello.client.get("/status").json()
    assert body["ready"] is True
    app = body["apps"]["hello"]
    assert app["state"] == "ready"
    assert app["replicas"][0]["state"] == "ready"
    assert {"queued", "restarts", "restarts_by_reason"} <= set(app)
    assert body["gpus"] == []
    assert any("error=validation" in line["message"] for line in body["logs"]["hello"])
    page = hello.client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert 'fetch("status"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert hello.client.get("/ui").text == page.text


def test_recent_logs_keep_the_newest_lines_per_app() -> None:
    logs = RecentLogs(size=3)
    logs.attach()
    try:
        for i in range(5):
            logging.getLogger("supervisor.app.one").info("line %d", i)
        logging.getLogger("supervisor.app.two").warning("other")
        logging.getLogger("supervisor.other").warning("not an app's")
        log_failure(failure_record("r1", "two", "run", "timeout", 504, 1.0), "slow")
    finally:
        logs.detach()
    assert [line["message"] for line in logs.recent("one")] == ["line 2", "line 3", "line 4"]
    two = logs.recent("two")
    assert [line["level"] for line in two] == ["warning", "error"]
    assert "request r1 failed" in two[1]["message"]
    assert set(logs.lines) == {"one", "two"}
