"""Big payloads and log floods through the library: the supervisor's side of the pipes
(its stdin writer, its stdout reader, the per-request buffers) must never deadlock."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import anyio
import pytest
from sup_helpers import make_supervisor

from protocol import BlobReader, BlobWriter
from supervisor import App
from supervisor.events import LogEvent, PartialEvent, ResultEvent

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

BIG = Path(__file__).resolve().parent.parent / "apps" / "child_big"
MIB = 1024 * 1024


@pytest.mark.timeout(120)
async def test_64_mib_in_and_100_mib_out() -> None:
    data = random.Random(7).randbytes(64 * MIB)
    async with make_supervisor() as sup:
        app = await sup.start(BIG)
        digest = await app.run({"data": data}, function="digest")
        assert digest == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        out = await app.run({"size": 100 * MIB, "seed": 3}, function="blob")
        assert isinstance(out["data"], bytes)  # msgpack bin end to end, never base64
        assert len(out["data"]) == out["size"] == 100 * MIB
        assert hashlib.sha256(out["data"]).hexdigest() == out["sha256"]


@pytest.mark.timeout(120)
async def test_a_50_mib_log_flood_reaches_a_streaming_caller() -> None:
    async with make_supervisor() as sup:
        app = await sup.start(BIG)
        logged = 0
        result = None
        async for event in app.stream({"total": 50 * MIB}, function="flood"):
            if isinstance(event, LogEvent):
                logged += len(event.message)
            elif isinstance(event, ResultEvent):
                result = event.output
        assert result is not None
        assert logged == result["chars"]


def _arenas(app: App) -> tuple[BlobWriter | None, BlobReader | None]:
    child = app.replicas[0].child
    assert child is not None
    connection = child.channel.connection
    return connection.blobs_out, connection.blobs_in


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool_size", [0, 1])
async def test_large_bytes_go_through_shared_memory(pool_size: int) -> None:
    data = random.Random(1).randbytes(8 * MIB)
    async with make_supervisor(pool_size=pool_size) as sup:
        app = await sup.start(BIG)
        assert app.replicas[0].child is not None
        assert app.replicas[0].child.channel.hello is not None
        assert app.replicas[0].child.channel.hello.shared_memory
        out = await app.run({"data": data, "parts": [b"a" * 100, data]}, function="echo")
        assert out == {"data": data, "parts": [b"a" * 100, data]}
        to_child, from_child = _arenas(app)
        assert to_child is not None and from_child is not None
        assert to_child.head == 2 * len(data)  # both blobs in, the short part inline
        assert from_child.consumed == 2 * len(data)
        with anyio.fail_after(30):  # the child's release of the inputs arrives
            while to_child.released < to_child.head:
                await anyio.sleep(0.01)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shared_memory", [0, 3 * MIB])
async def test_without_room_in_shared_memory_bytes_go_through_the_pipe(
    shared_memory: int,
) -> None:
    """Off, or too small for the payload: the same results, inline."""
    data = random.Random(2).randbytes(4 * MIB)
    async with make_supervisor(shared_memory=shared_memory, pool_size=0) as sup:
        app = await sup.start(BIG)
        assert await app.run({"data": data}, function="echo") == {"data": data, "parts": []}
        to_child, from_child = _arenas(app)
        if shared_memory == 0:
            assert to_child is None and from_child is None
        else:
            assert to_child is not None and to_child.head == 0


@pytest.mark.timeout(120)
async def test_concurrent_calls_share_a_small_arena_without_mixing_bytes() -> None:
    """Eight overlapping 1 MiB echoes through 3 MiB arenas: whether a blob finds room
    depends on timing (it goes inline when not), and every caller gets its own bytes."""
    async with make_supervisor(shared_memory=3 * MIB, pool_size=0) as sup:
        app = await sup.start(BIG, max_concurrency=8)
        payloads = [random.Random(seed).randbytes(MIB) for seed in range(8)]
        results: dict[int, object] = {}

        async def call(i: int) -> None:
            results[i] = await app.run({"data": payloads[i]}, function="echo")

        for _ in range(3):
            async with anyio.create_task_group() as tasks:
                for i in range(8):
                    tasks.start_soon(call, i)
            assert results == {i: {"data": payloads[i], "parts": []} for i in range(8)}
        to_child, _ = _arenas(app)
        assert to_child is not None and to_child.head > 0


@pytest.mark.timeout(120)
async def test_streamed_partials_of_large_bytes_arrive_whole_and_in_order() -> None:
    """Twelve 2 MiB partials through 5 MiB arenas: whether each finds room depends on
    how fast the supervisor releases the ones before (else it goes inline); all arrive
    intact and in order."""
    async with make_supervisor(shared_memory=5 * MIB, pool_size=0) as sup:
        app = await sup.start(BIG)
        partials = [
            event.output
            async for event in app.stream({"count": 12, "size": 2 * MIB}, function="chunks")
            if isinstance(event, PartialEvent)
        ]
        assert [hashlib.sha256(p["data"]).hexdigest() for p in partials] == [
            hashlib.sha256(random.Random(seed).randbytes(2 * MIB)).hexdigest() for seed in range(12)
        ]
        _, from_child = _arenas(app)
        assert from_child is not None and from_child.consumed > 0


def test_a_negative_shared_memory_size_is_refused() -> None:
    with pytest.raises(ValueError, match="shared_memory must be at least 0"):
        make_supervisor(shared_memory=-1)
