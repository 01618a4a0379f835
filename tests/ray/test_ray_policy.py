"""The Ray deployment's decisions, without a cluster: GPU requests, pinning, options, CLI."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")

import anyio
import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from supervisor import errors as E
from supervisor.cli import main
from supervisor.ray.board import StatusBoard, cancel_outcome, live_entries
from supervisor.ray.launch import route_prefix
from supervisor.ray.serve import (
    AppReplica,
    RayOptions,
    ReplicaHeaders,
    build_app,
    deployment_options,
    gpu_request,
    pinned_gpus,
    serve_app,
)

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3


@pytest.mark.parametrize(
    ("count", "vram", "memory", "expected"),
    [
        (0, None, None, 0.0),
        (0, 4 * GIB, 16 * GIB, 0.0),
        (1, None, 16 * GIB, 1.0),  # no budget: the whole device
        (1, 4 * GIB, None, 1.0),  # device size unknown: the whole device
        (1, 4 * GIB, 16 * GIB, 0.25),
        (1, 4 * GIB + 1, 16 * GIB, 0.3),  # rounded up, never down
        (1, 1, 16 * GIB, 0.05),  # at least one step
        (1, 15_000_000_000, 16 * GIB, 0.9),
        (1, 40 * GIB, 16 * GIB, 1.0),  # larger than a device: capped at one
        (2, 4 * GIB, 16 * GIB, 2.0),  # Ray takes fractions only below one
    ],
)
def test_gpu_request(count: int, vram: int | None, memory: int | None, expected: float) -> None:
    assert gpu_request(count, vram, memory) == pytest.approx(expected)


def test_gpu_request_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        gpu_request(-1, None, None)


def test_pinned_gpus_are_rays_indices() -> None:
    assert pinned_gpus([]) == ()
    assert pinned_gpus([1, 0]) == (1, 0)
    assert pinned_gpus(["3", "3"]) == (3,)


def test_pinned_gpus_refuse_uuids() -> None:
    with pytest.raises(E.AdmissionError, match="not a device index"):
        pinned_gpus(["GPU-5b1e3f9a"])


def test_deployment_options_fixed_replicas() -> None:
    got = deployment_options(RayOptions(num_replicas=3, max_ongoing_requests=2), 0.25)
    assert got["num_replicas"] == 3
    assert "autoscaling_config" not in got
    assert got["max_ongoing_requests"] == 2
    assert got["max_constructor_retry_count"] == 3
    assert got["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.25}


def test_deployment_options_autoscaling_bounds() -> None:
    got = deployment_options(RayOptions(min_replicas=0, max_replicas=4), 0.0)
    assert "num_replicas" not in got
    assert got["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "initial_replicas": 1,
    }
    with pytest.raises(ValueError, match="autoscaling bounds"):
        deployment_options(RayOptions(min_replicas=5, max_replicas=2), 0.0)


def test_per_app_options_pass_through_and_win() -> None:
    options = RayOptions(
        num_replicas=2,
        deployment={
            "max_replicas_per_node": 1,
            "num_replicas": 5,
            "ray_actor_options": {"resources": {"big": 1}, "num_cpus": 2},
        },
    )
    got = deployment_options(options, 1.0)
    assert got["max_replicas_per_node"] == 1
    assert got["num_replicas"] == 5
    assert got["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1.0, "resources": {"big": 1}}


def test_serve_app_derives_num_gpus_from_inf_yml() -> None:
    name, app = serve_app(REPO / "tests/apps/ray_gpu", RayOptions(gpu_memory=16 * GIB))
    assert name == "ray_gpu"
    options = app._bound_deployment.ray_actor_options
    assert options["num_gpus"] == pytest.approx(0.25)  # 4e9 bytes of 16 GiB, up to 0.05


def test_build_app_reads_serve_run_arguments() -> None:
    app = build_app({"app_dir": str(REPO / "examples/hello"), "num_replicas": "2"})
    assert app._bound_deployment.num_replicas == 2
    assert app._bound_deployment.name == "hello"
    with pytest.raises(ValueError, match="app_dir"):
        build_app({})
    with pytest.raises(ValueError, match="unknown build_app keys: replica"):
        build_app({"app_dir": str(REPO / "examples/hello"), "replica": "2"})


def test_route_prefix() -> None:
    assert route_prefix("hello", 1) == "/"
    assert route_prefix("hello", 2) == "/apps/hello"


def test_replica_headers_name_node_and_replica() -> None:
    inner = Starlette(routes=[Route("/", lambda request: PlainTextResponse("hi"))])
    transport = httpx.ASGITransport(ReplicaHeaders(inner, node="n1", replica="r1"))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/")

    response = anyio.run(get)
    assert response.text == "hi"
    assert response.headers["x-appvisor-node"] == "n1"
    assert response.headers["x-appvisor-replica"] == "r1"


def test_cli_refuses_gpus_with_ray(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(REPO / "examples/hello"), "--ray", "--gpus", "1"]) == 2
    assert "Ray assigns each replica's GPUs" in capsys.readouterr().err


def test_cli_deployment_options_must_name_a_served_app(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["serve", str(REPO / "examples/hello"), "--ray", "--deployment-options", "nope={}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--deployment-options 'nope={}'" in err and "a served app (hello)" in err


class StatusOnly:
    def __init__(self, state: str) -> None:
        self.state = state

    def status(self) -> dict[str, str]:
        return {"state": self.state}


@pytest.mark.parametrize("state", ["ready", "busy", "restarting", "starting"])
def test_health_check_leaves_restarts_to_the_supervisor(state: str) -> None:
    replica = SimpleNamespace(apps={"hello": StatusOnly(state)}, node_id="n1")
    AppReplica.check_health(replica)  # type: ignore[arg-type]


@pytest.mark.parametrize("state", ["failed", "stopped"])
def test_health_check_fails_when_the_app_gave_up(state: str) -> None:
    replica = SimpleNamespace(apps={"hello": StatusOnly(state)}, node_id="n1")
    with pytest.raises(RuntimeError, match=f"app hello is {state} on node n1"):
        AppReplica.check_health(replica)  # type: ignore[arg-type]


def test_status_board_keeps_what_is_fresh() -> None:
    assert live_entries({"a": (10.0, {"n": 1}), "b": (5.0, {"n": 2})}, now=7.0) == {"a": {"n": 1}}
    board = StatusBoard()
    board.post("r1", {"node": "n1"}, ttl=60)
    board.post("r2", {"node": "n2"}, ttl=60)
    board.post("r1", {"node": "n1", "again": True}, ttl=60)
    assert board.read() == {"r1": {"node": "n1", "again": True}, "r2": {"node": "n2"}}
    board.remove("r2")
    board.remove("unknown")
    assert set(board.read()) == {"r1"}
    board.post("r3", {"node": "n3"}, ttl=-1)  # already expired: a replica that went silent
    assert set(board.read()) == {"r1"}


def test_relayed_cancel_outcome() -> None:
    assert cancel_outcome({"a": False}, live=["a", "b"]) is None  # b has not answered
    assert cancel_outcome({"a": False, "b": True}, live=["a", "b"]) is True
    assert cancel_outcome({"a": False, "b": False}, live=["a", "b"]) is False
    assert cancel_outcome({"a": False}, live=["a"]) is False  # nobody else to ask


def test_status_board_relays_cancels() -> None:
    board = StatusBoard()
    board.post("a", {}, ttl=60)
    board.post("b", {}, ttl=60)
    board.ask_cancel("req", "a", ttl=60)
    assert board.pending_cancels("a") == []  # the asker already looked
    assert board.pending_cancels("b") == ["req"]
    assert board.cancel_outcome("req") is None
    board.answer_cancel("req", "b", True)
    assert board.cancel_outcome("req") is True
    assert board.pending_cancels("b") == []
    assert board.cancel_outcome("never-asked") is False
    board.ask_cancel("old", "a", ttl=-1)
    assert board.pending_cancels("b") == []  # expired asks are dropped
