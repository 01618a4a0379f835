"""One path for a request: ``App.run`` (the library) and ``App.submit`` (HTTP) both
go through ``App._dispatch`` to ``Replica.serve``; a free replica takes a request at
once, a busy one leaves it to the queue. Fake children: no process is started."""

from __future__ import annotations

import anyio
import pytest
from fake_child import ScriptedChild

from protocol import Result, Run
from supervisor import errors
from supervisor.core.app import App

pytestmark = pytest.mark.anyio
GUARD = 10.0
"""Seconds a test may take before it is stuck (a bound, not a measurement)."""


@pytest.fixture
def child(scripted_child: ScriptedChild) -> ScriptedChild:
    return scripted_child


@pytest.fixture
def app(scripted_app: App) -> App:
    return scripted_app


async def test_run_and_submit_both_reach_the_child(app: App) -> None:
    with anyio.fail_after(GUARD):
        assert await app.run({"n": 1}) == {"echo": {"n": 1}}
        result = await app.submit({"n": 2}).result()
    assert result.output == {"echo": {"n": 2}}


async def test_a_free_replica_takes_a_submitted_request_without_the_queue(
    app: App, child: ScriptedChild
) -> None:
    child.answering = False
    request = app.submit({})
    assert app.status()["queued"] == 0  # taken at once, as App.run's are
    with anyio.fail_after(GUARD):
        while not child.held:
            await anyio.sleep(0.005)
    assert child.channel is not None
    child.channel.reply(Result(request.id, {"late": True}))
    assert (await request.result()).output == {"late": True}


async def test_a_busy_replica_leaves_requests_to_the_queue_and_a_full_one_refuses(
    app: App, child: ScriptedChild
) -> None:
    child.answering = False
    first = app.submit({})
    second = app.submit({})
    assert app.status()["queued"] == 1
    with pytest.raises(errors.BusyError):
        app.submit({})
    with pytest.raises(errors.BusyError):
        await app.run({})
    assert child.channel is not None
    with anyio.fail_after(GUARD):
        while not child.held:
            await anyio.sleep(0.005)
        child.channel.reply(Result(first.id, {}))
        while len(child.held) < 2:
            await anyio.sleep(0.005)
        child.channel.reply(Result(second.id, {}))
        await second.result()


async def test_a_request_cancelled_before_it_reached_a_child_never_runs(
    app: App, child: ScriptedChild
) -> None:
    child.answering = False
    app.submit({})
    queued = app.submit({})
    assert await app.cancel(queued.id)
    with pytest.raises(errors.RequestCancelledError):
        await queued.result()


async def test_a_request_cancelled_as_soon_as_a_free_replica_took_it_never_runs(
    app: App, child: ScriptedChild
) -> None:
    request = app.submit({})
    assert await app.cancel(request.id)
    with pytest.raises(errors.RequestCancelledError):
        await request.result()
    assert app.status()["replicas"][0]["in_flight"] == 0
    assert child.channel is not None
    assert not any(isinstance(m, Run) for m in child.channel.sent)
    with anyio.fail_after(GUARD):
        assert await app.run({"n": 3}) == {"echo": {"n": 3}}  # its capacity came back
