"""Big payloads and log floods through the library: the supervisor's side of the pipes
(its stdin writer, its stdout reader, the per-request buffers) must never deadlock."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from sup_helpers import make_supervisor

from supervisor.events import LogEvent, ResultEvent

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
