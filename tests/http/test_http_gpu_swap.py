"""``serve`` with two apps whose declared VRAM does not fit on the GPU together.

They take turns: each request for the unloaded one evicts the idle other. Both
stay available all along, so ``/health`` answers 200 (a load balancer must not
take the server out of rotation because one app is unloaded until its next
request). The GPU is the fake NVML backend (see the README).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from http_helpers import APPS, Server, metric_value

GIB = 1 << 30


def make_app(root: Path, name: str) -> Path:
    directory = root / name
    shutil.copytree(APPS / "mem_gpu", directory)
    (directory / "inf.yml").write_text(
        f"name: {name}\nresources:\n  gpu:\n    count: 1\n    vram: {6 * GIB}\n"
    )
    return directory


def test_apps_that_do_not_fit_together_take_turns_and_stay_healthy(tmp_path: Path) -> None:
    nvml = tmp_path / "nvml.json"
    device = {"index": 0, "name": "Fake GPU 0", "total_mib": 8192}
    nvml.write_text(json.dumps({"devices": [device], "processes": {}}))
    dirs = [make_app(tmp_path, name) for name in ("first", "second")]
    server = Server(
        [*map(str, dirs), "--setup", json.dumps({"vram_mib": 6144})],
        log=tmp_path / "server.log",
        env={"SUPERVISOR_FAKE_NVML": str(nvml)},
    )
    try:
        server.wait_ready()  # before "available", /health stayed 503: first was unloaded
        health = server.client.get("/health").json()["apps"]
        assert health["first"]["state"] == "unloaded" and health["first"]["available"]
        assert health["second"]["ready"]
        for name, other in [("first", "second"), ("second", "first"), ("first", "second")]:
            response = server.client.post(f"/apps/{name}/run", json={"input": {}})
            assert response.status_code == 200, response.text
            assert response.json()["output"]["gpus"] == "0"
            health_response = server.client.get("/health")
            assert health_response.status_code == 200
            states = {n: s["state"] for n, s in health_response.json()["apps"].items()}
            assert states == {name: "ready", other: "unloaded"}
        metrics = server.client.get("/metrics").text
        assert metric_value(metrics, "appvisor_gpu_memory_total_bytes", gpu="0") == 8 * GIB
        # The ready app's whole budget until its new child is sampled, then nothing:
        # it uses all of it. The evicted one promises nothing.
        promised = metric_value(metrics, "appvisor_gpu_memory_promised_bytes", gpu="0")
        assert promised in (0, 6 * GIB)
        assert 'appvisor_evictions_total{app="first"} 2.0' in metrics
        assert 'appvisor_evictions_total{app="second"} 2.0' in metrics
    finally:
        assert server.stop() == 0, server.logs()
