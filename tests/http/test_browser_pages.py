"""The status page and /docs in a real headless browser (Debian's chromium).

``.ci/run`` installs chromium; where it is missing these tests are skipped. The
page must render its content (a screenshot that is not blank, with the GPU
bar's three colours) and, once its script ran, hold the apps, their restarts
with reasons and their recent logs. Set ``APPVISOR_SCREENSHOT_DIR`` to keep the
screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import APPS, TOKEN, Server
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine (.ci/run installs Debian's: apt-get install -y chromium)",
)
USED, PROMISED, FREE = (207, 34, 46), (212, 167, 44), (45, 164, 78)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("browser")
    nvml = root / "nvml.json"
    device = {"index": 0, "name": "Fake GPU", "total_mib": 16384, "reserved_mib": 3072}
    nvml.write_text(json.dumps({"devices": [device], "processes": {}}))
    apps = [str(APPS / name) for name in ("gpu_hello", "setup_talks", "http_faults")]
    server = Server(
        [*apps, "--auth-token", TOKEN],
        token=TOKEN,
        log=root / "server.log",
        env={"SUPERVISOR_FAKE_NVML": str(nvml)},
    )
    try:
        server.wait_ready()
        crashed = server.client.post("/apps/http_faults/run/crash", json={"input": {}})
        assert crashed.status_code == 503, crashed.text
        deadline = time.monotonic() + 30
        while server.client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, server.logs()
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=8000",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def keep(path: Path) -> None:
    target = os.environ.get("APPVISOR_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def count_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    return sum(
        n
        for n, pixel in image.getcolors(maxcolors=1 << 22) or []
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))
    )


def test_the_status_page_shows_apps_restarts_gpus_and_logs(server: Server, tmp_path: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", f"{server.url}/#token={TOKEN}").stdout
    for name in ("gpu_hello", "setup_talks", "http_faults"):
        assert f'data-app="{name}"' in dom, dom[-3000:]
    assert "[stdout] loading weights" in dom  # the app's setup output
    assert "setup progress 100% shard 4/4" in dom
    assert "restarts <b>1</b> (crash x1)" in dom
    assert "used 3072 MiB · promised 4096 MiB · free 13312 MiB" in dom
    assert "error=child_crashed status=503" in dom  # the failed request, in its app's logs
    assert "updated" in dom


def test_the_status_page_screenshot_renders_its_content(server: Server, tmp_path: Path) -> None:
    shot = tmp_path / "status-page.png"
    chromium(
        tmp_path, "--window-size=1280,1000", f"--screenshot={shot}", f"{server.url}/#token={TOKEN}"
    )
    keep(shot)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1000)
    colours = image.getcolors(maxcolors=1 << 22) or []
    assert len(colours) > 50  # text and widgets, not a blank page
    # The GPU bar: used, promised and free, in proportion (3, 4 and 9 GiB of 16).
    used, promised, free = (count_near(image, c) for c in (USED, PROMISED, FREE))
    assert used > 1000 and promised > 1000 and free > 1000, (used, promised, free)
    assert used < promised < free


def test_without_the_token_the_page_asks_for_it(server: Server, tmp_path: Path) -> None:
    assert httpx.get(f"{server.url}/").status_code == 200  # the page itself is public
    assert httpx.get(f"{server.url}/status").status_code == 401
    dom = chromium(tmp_path, "--dump-dom", f"{server.url}/").stdout
    assert "this server needs a token" in dom
    assert 'data-app="gpu_hello"' not in dom


def test_docs_render_every_operation_in_the_browser(server: Server, tmp_path: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", f"{server.url}/docs#token={TOKEN}").stdout
    for path in ("/apps/gpu_hello/run/run", "/apps/http_faults/run/read_file", "/health/ready"):
        assert f'data-path="{path}"' in dom, path
    assert "OAS 3.1" in dom
    shot = tmp_path / "docs.png"
    chromium(tmp_path, "--window-size=1280,1400", f"--screenshot={shot}", f"{server.url}/docs")
    keep(shot)
    assert len(Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 22) or []) > 50


TRY_IT_OUT = """
(async () => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const until = async (find, what) => {
    for (let i = 0; i < 300; i++) {
      const found = find();
      if (found) return found;
      await sleep(100);
    }
    throw new Error("timed out waiting for " + what);
  };
  const path = await until(
    () => document.querySelector('.opblock-summary-path[data-path="__PATH__"]'), "the operation");
  const block = path.closest(".opblock");
  block.querySelector(".opblock-summary-control").click();
  const execute = await until(() => block.querySelector("button.execute"), "Execute");
  const body = await until(() => block.querySelector("textarea.body-param__text"), "the body");
  const sent = body.value;
  execute.click();
  const live = ".live-responses-table .response";
  const status = await until(
    () => block.querySelector(live + " .response-col_status"), "a response");
  const text = await until(
    () => block.querySelector(live + " .response-col_description pre"), "its body");
  return JSON.stringify({sent, status: status.textContent.trim(), body: text.textContent});
})()
"""


def test_docs_run_a_request_with_the_token(server: Server, tmp_path: Path) -> None:
    """Swagger UI's "Try it out" on a real page: the example body, the token, the answer."""
    websocket = pytest.importorskip("websocket")
    assert CHROMIUM is not None
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            f"{server.url}/docs#token={TOKEN}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert browser.stderr is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = browser.stderr.readline()
            if "DevTools listening on ws://" in line:
                port = int(line.split("ws://127.0.0.1:")[1].split("/")[0])
        assert port is not None, "chromium did not open its debugging port"
        while True:
            targets = httpx.get(f"http://127.0.0.1:{port}/json").json()
            pages = [t for t in targets if t["type"] == "page" and "/docs" in t["url"]]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert pages
        connection = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        try:
            expression = TRY_IT_OUT.replace("__PATH__", "/apps/gpu_hello/run/run")
            for attempt in range(20):  # until the page has finished loading
                message = _evaluate(connection, attempt + 1, expression)
                if "Execution context was destroyed" not in json.dumps(message):
                    break
                time.sleep(0.25)
        finally:
            connection.close()
    finally:
        browser.terminate()
        browser.wait(30)
    assert "result" in message, message
    result = message["result"]
    assert "exceptionDetails" not in result, result
    outcome = json.loads(result["result"]["value"])
    sent = json.loads(outcome["sent"])
    assert sent["input"] == {"name": "GPU"}  # the schema's default, as the example body
    assert sent["stream"] is False
    assert outcome["status"] == "200", outcome
    assert json.loads(outcome["body"])["output"]["greeting"] == "Hello, GPU!"


def _evaluate(connection: Any, call: int, expression: str) -> dict[str, Any]:
    """Run ``expression`` in the page (Chrome DevTools protocol) and return the answer."""
    params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
    connection.send(json.dumps({"id": call, "method": "Runtime.evaluate", "params": params}))
    while True:
        message: dict[str, Any] = json.loads(connection.recv())
        if message.get("id") == call:
            return message
