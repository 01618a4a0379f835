"""Apps served by Ray Serve on a real two-node Ray cluster on this machine.

``ray.cluster_utils.Cluster`` starts a head node and a worker node as separate
raylets; the head declares two GPUs that do not exist, which the fake NVML file
describes to each replica's supervisor. Requests go through Serve's HTTP proxy
with the checks of tests/http. The tests share one cluster and run in order:
the last one removes the worker node.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from supervisor.ray.serve import NODE_HEADER, REPLICA_HEADER, RayOptions, serve_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from http_helpers import metric_value, sse_events

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3
SMALL = 0.1
"""CPUs per replica: the machine is small and shared."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RayCluster:
    def __init__(self, cluster: Cluster, worker: Any, url: str) -> None:
        self.cluster = cluster
        self.worker = worker
        self.head_id: str = cluster.head_node.node_id
        self.worker_id: str = worker.node_id
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=60)

    def replica_health(self, node: str | None = None, tries: int = 60) -> httpx.Response:
        """A /health answer from a replica on ``node`` (any replica when None)."""
        for _ in range(tries):
            response = self.client.get("/health")
            if node is None or response.headers.get(NODE_HEADER) == node:
                return response
        raise AssertionError(f"no /health answer from node {node} in {tries} tries")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    nvml = tmp_path_factory.mktemp("nvml") / "nvml.json"
    devices = [{"index": i, "name": f"Fake GPU {i}", "total_mib": 16384} for i in range(2)]
    nvml.write_text(json.dumps({"devices": devices, "processes": {}}))
    # Raylets, and so every replica and the proxy, inherit the environment of the
    # process that starts them. The proxy would prefer the replica on its own node;
    # the tests need requests to reach both.
    env = {"SUPERVISOR_FAKE_NVML": str(nvml), "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 2, "include_dashboard": False},
    )
    try:
        worker = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        name, app = serve_app(
            REPO / "examples/hello",
            RayOptions(num_replicas=2, num_cpus=SMALL, deployment={"max_replicas_per_node": 1}),
        )
        serve.run(app, name=name, route_prefix="/")
        yield RayCluster(cluster, worker, f"http://127.0.0.1:{port}")
    finally:
        with_errors = []
        for stop in (serve.shutdown, ray.shutdown, cluster.shutdown):
            try:
                stop()
            except Exception as exc:  # pragma: no cover - reported below
                with_errors.append(exc)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        assert not with_errors, with_errors


def test_replicas_on_both_nodes_serve_run_stream_health_openapi(ray_cluster: RayCluster) -> None:
    client = ray_cluster.client
    nodes = set()
    for _ in range(40):
        response = client.post("/run", json={"input": {"name": "Ray"}})
        assert response.status_code == 200, response.text
        assert response.json()["output"]["greeting"] == "Hello, Ray!"
        # Ray's proxy appends its own id: ours first, then Ray's.
        ours = response.headers["x-request-id"].split(",")[0]
        assert ours == response.json()["request_id"]
        nodes.add(response.headers[NODE_HEADER])
        if len(nodes) == 2:
            break
    assert nodes == {ray_cluster.head_id, ray_cluster.worker_id}

    reverse = client.post("/run/reverse", json={"input": {"text": "abc"}})
    assert reverse.json()["output"]["text"] == "cba"
    invalid = client.post("/run", json={"input": {}})
    assert invalid.status_code == 422
    assert invalid.json()["error"]["type"] == "validation"

    with client.stream("POST", "/run/count", json={"input": {"n": 3}, "stream": True}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = sse_events(stream)
    assert [name for name, _ in events] == ["start", "partial", "partial", "partial", "result"]
    assert [data["output"]["n"] for name, data in events if name == "partial"] == [1, 2, 3]

    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["apps"]["hello"]["state"] == "ready"
    spec = client.get("/openapi.json").json()
    assert spec["openapi"] == "3.1.0"
    assert {"/run/run", "/run/reverse", "/run/count", "/cancel/{request_id}", "/health"} <= set(
        spec["paths"]
    )
    assert spec["paths"]["/run/count"]["post"]["x-streaming"] is True
    assert client.post("/cancel/nothing-like-this").status_code == 404


def test_cluster_health_and_metrics_carry_the_node(ray_cluster: RayCluster) -> None:
    client = ray_cluster.client
    both = {ray_cluster.head_id, ray_cluster.worker_id}

    def every_replica() -> dict[str, Any] | None:
        answer = client.get("/cluster/health")
        body: dict[str, Any] = answer.json()
        nodes = {entry["node"] for entry in body["replicas"].values()}
        return body if answer.status_code == 200 and nodes == both else None

    # Whichever replica answers lists both, the other from the status board.
    body = until(every_replica, 30, "/cluster/health to list both replicas")
    assert body["status"] == "ok"
    assert len(body["replicas"]) == 2
    assert body["answered_by"] in body["replicas"]
    for entry in body["replicas"].values():
        assert entry["apps"]["hello"]["state"] == "ready"
        assert entry["apps"]["hello"]["available"] is True
        assert len(entry["apps"]["hello"]["pids"]) == 1
    assert body["deployments"]["hello"]["replicas"] == {"RUNNING": 2}

    metrics = client.get("/metrics")
    node = metrics.headers[NODE_HEADER]
    replica = metrics.headers[REPLICA_HEADER]
    labels = {"app": "hello", "node": node, "replica": replica}
    assert metric_value(metrics.text, "appvisor_replica_info", **labels) == 1.0
    assert metric_value(metrics.text, "appvisor_app_ready", app="hello") == 1.0


def test_cancel_reaches_the_replica_that_runs_the_request(ray_cluster: RayCluster) -> None:
    client = ray_cluster.client
    relayed = 0
    for attempt in range(8):
        request_id = f"relay-{attempt}"
        body = {"input": {"n": 200, "delay": 0.05}, "request_id": request_id}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/run/count", json=body)
            deadline = time.monotonic() + 10
            while True:
                cancel = client.post(f"/cancel/{request_id}")
                if cancel.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert cancel.status_code == 200, cancel.text
            assert cancel.json() == {"cancelled": True, "request_id": request_id, "app": "hello"}
            response = pending.result(timeout=30)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["type"] == "cancelled"
        if cancel.headers[REPLICA_HEADER] != response.headers[REPLICA_HEADER]:
            relayed += 1  # the cancel landed on the other replica, which relayed it
            if relayed == 2:
                break
    assert relayed >= 1


def test_sigkill_of_a_replicas_child_is_our_restart(ray_cluster: RayCluster) -> None:
    client = ray_cluster.client
    health = ray_cluster.replica_health()
    replica = health.headers[REPLICA_HEADER]
    status = health.json()["apps"]["hello"]
    [pid] = status["pids"]
    restarts = status["restarts"]
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        answer = client.get("/health")
        if answer.headers.get(REPLICA_HEADER) != replica:
            return None
        status = answer.json()["apps"]["hello"]
        return status if status["restarts"] > restarts else None  # type: ignore[no-any-return]

    # As on one machine, a request written to the child in the instant before the
    # supervisor sees it die fails (503 child_crashed); so wait for the supervisor
    # to notice, as a client retrying a 503 would.
    after = until(restarted, 60, "the replica's supervisor to count the restart", every=0.1)
    assert after["restarts"] == restarts + 1
    assert after["restarts_by_reason"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    def answer_from_that_replica() -> httpx.Response | None:
        response = client.post("/run", json={"input": {"name": "again"}})
        return response if response.headers.get(REPLICA_HEADER) == replica else None

    response = until(answer_from_that_replica, 60, "a request routed to the killed child's replica")
    assert response.status_code == 200, response.text
    assert response.json()["output"]["greeting"] == "Hello, again!"
    final = ray_cluster.client.get("/health")
    if final.headers.get(REPLICA_HEADER) == replica:
        assert final.json()["apps"]["hello"]["pids"] != [pid]


def test_gpu_pinning_follows_rays_assignment(ray_cluster: RayCluster) -> None:
    # One whole GPU per replica (no --gpu-memory), two replicas, two GPUs on the head:
    # Ray gives them different devices, and each child must see only its own.
    name, app = serve_app(REPO / "tests/apps/ray_gpu", RayOptions(num_replicas=2, num_cpus=SMALL))
    serve.run(app, name=name, route_prefix="/gpu")
    try:
        client = ray_cluster.client
        seen: dict[str, str] = {}
        for _ in range(60):
            response = client.post("/gpu/run", json={"input": {}})
            assert response.status_code == 200, response.text
            assert response.headers[NODE_HEADER] == ray_cluster.head_id  # the GPU node
            output = response.json()["output"]
            seen[response.headers[REPLICA_HEADER]] = output["cuda_visible_devices"]
            if len(seen) == 2:
                break
        assert sorted(seen.values()) == ["0", "1"]

        def both_listed() -> dict[str, Any] | None:
            replicas: dict[str, Any] = client.get("/gpu/cluster/health").json()["replicas"]
            return replicas if set(replicas) == set(seen) else None

        replicas = until(both_listed, 30, "/gpu/cluster/health to list both replicas")
        for replica, visible in seen.items():
            # What Ray assigned to the actor (ray.get_gpu_ids()) is what the child sees.
            assert visible == ",".join(str(i) for i in replicas[replica]["gpus"])
            assert replicas[replica]["apps"]["ray_gpu"]["gpus"] == replicas[replica]["gpus"]
    finally:
        serve.delete(name)


def test_cli_deploys_on_a_running_cluster_and_stops_on_sigterm(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    log = tmp_path / "cli.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor",
                "serve",
                str(REPO / "tests/apps/plain"),
                str(REPO / "tests/apps/introspect"),
                "--ray",
                ray_cluster.cluster.address,
                "--ray-num-cpus",
                str(SMALL),
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = ray_cluster.client

        def served() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                ok = client.get("/apps/plain/health").status_code == 200
                return ok and client.get("/apps/introspect/health").status_code == 200
            except httpx.HTTPError:
                return False

        until(served, 120, "the CLI's apps to be served")
        response = client.post("/apps/plain/run", json={"input": {"text": "ray"}})
        assert response.json()["output"] == {"text": "RAY", "setup_called": True}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, log.read_text()
        assert not {"plain", "introspect"} & set(serve.status().applications)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_exits_non_zero_and_undeploys_when_an_app_cannot_start(ray_cluster: RayCluster) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor",
            "serve",
            str(REPO / "tests/apps/plain"),
            str(REPO / "tests/apps/broken_import"),
            "--ray",
            ray_cluster.cluster.address,
            "--ray-num-cpus",
            str(SMALL),
            # Passed through to Serve: one try instead of our default of three.
            "--deployment-options",
            'broken_import={"max_constructor_retry_count": 1}',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 5, result.stderr[-3000:]
    assert "error: " in result.stderr
    assert "broken_import" in result.stderr
    assert "replica logs" in result.stderr
    # The app deployed before the failure is taken down again.
    assert not {"plain", "broken_import"} & set(serve.status().applications)


def test_cli_without_address_starts_its_own_cluster_and_stops_it(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    # A cluster already runs here (the module's), and Ray would join it given no
    # address: the command must start its own, serving on its own port.
    port = free_port()
    log = tmp_path / "cli.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor",
                "serve",
                str(REPO / "examples/hello"),
                "--ray",
                "--port",
                str(port),
                "--ray-num-cpus",
                "0.1",
                "--setup",
                '{"greeting": "Hi"}',
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                response = client.post("/run", json={"input": {"name": "Ada"}})
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert response.json()["output"]["greeting"] == "Hi, Ada!"
        health = client.get("/cluster/health").json()
        assert health["status"] == "ok"
        assert list(health["replicas"]) == [health["answered_by"]]
        started = psutil.Process(process.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in started)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, log.read_text()[-3000:]
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_node_loss_requests_keep_succeeding_and_ray_replaces_the_replica(
    ray_cluster: RayCluster,
) -> None:
    client = ray_cluster.client
    lost = ray_cluster.replica_health(node=ray_cluster.worker_id).json()["apps"]["hello"]["pids"]
    ray_cluster.cluster.remove_node(ray_cluster.worker)

    # Sent after the node is gone: Serve's router finds the dead replica and routes to
    # the live one, so none of them fails.
    for i in range(10):
        response = client.post("/run", json={"input": {"name": f"n{i}"}})
        assert response.status_code == 200, response.text
        assert response.headers[NODE_HEADER] == ray_cluster.head_id
    until(lambda: not any(psutil.pid_exists(pid) for pid in lost), 30, "the lost node's child")

    def worker_dropped_out() -> bool:
        replicas = client.get("/cluster/health").json()["replicas"].values()
        return {entry["node"] for entry in replicas} == {ray_cluster.head_id}

    until(worker_dropped_out, 30, "the lost replica to leave /cluster/health")

    # max_replicas_per_node=1: the replacement waits for a node, and takes the new one.
    fresh = ray_cluster.cluster.add_node(num_cpus=1)

    def replaced() -> bool:
        response = client.post("/run", json={"input": {"name": "new"}})
        assert response.status_code == 200, response.text
        return response.headers[NODE_HEADER] == fresh.node_id

    until(replaced, 120, "a replica on the new node")
    states = serve.status().applications["hello"].deployments["hello"].replica_states
    assert {str(k): v for k, v in states.items()} == {"RUNNING": 2}
