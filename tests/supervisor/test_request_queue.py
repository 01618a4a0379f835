"""The app's request queue on its own: bound, order, skipping ended requests, waking replicas."""

from __future__ import annotations

import anyio
import pytest

from supervisor.core.request import Request
from supervisor.core.request_queue import RequestQueue

pytestmark = pytest.mark.anyio


def request(name: str) -> Request:
    return Request(function=name, input={}, config={})


async def test_first_in_first_out_within_the_bound() -> None:
    queue = RequestQueue(2)
    a, b = request("a"), request("b")
    queue.put(a)
    queue.put(b)
    with pytest.raises(anyio.WouldBlock):
        queue.put(request("c"))
    assert len(queue) == 2
    assert queue.take() is a
    assert queue.take() is b
    assert queue.take() is None


async def test_a_request_that_ended_while_waiting_is_skipped() -> None:
    queue = RequestQueue(5)
    a, b = request("a"), request("b")
    queue.put(a)
    queue.put(b)
    a.finished = True
    assert queue.take() is b
    assert len(queue) == 0


async def test_put_back_goes_to_the_head_even_when_full() -> None:
    queue = RequestQueue(1)
    waiting, returned = request("waiting"), request("returned")
    queue.put(waiting)
    queue.put_back(returned)
    assert [queue.take(), queue.take()] == [returned, waiting]


async def test_wait_wakes_every_replica_on_a_request_and_on_close() -> None:
    queue = RequestQueue(5)
    woke: list[bool] = []

    async def replica() -> None:
        woke.append(await queue.wait())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(replica)
        tasks.start_soon(replica)
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        queue.put(request("a"))
    assert woke == [True, True]
    assert queue.take() is not None
    # Emptied: waiting blocks again, until the queue closes.
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(replica)
        await anyio.wait_all_tasks_blocked()
        assert woke == [True, True]
        queue.close()
    assert woke == [True, True, False]
    with pytest.raises(anyio.ClosedResourceError):
        queue.put(request("late"))
