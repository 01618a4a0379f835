"""Concurrent callers, replicas, a bounded queue, and cancelling requests."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from sup_helpers import in_flight, make_supervisor, outcome, wait_for

from supervisor import RestartPolicy
from supervisor.errors import (
    AppFailedError,
    AppStoppedError,
    BusyError,
    ChildCrashedError,
    InputValidationError,
    RequestCancelledError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]


async def test_ten_callers_on_max_concurrency_four(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", max_concurrency=4)
        pid = app.status()["pids"][0]
        results: dict[int, dict[str, Any]] = {}

        async def call(i: int) -> None:
            results[i] = await app.run({"text": f"caller {i}", "delay": 0.3})

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                for i in range(10):
                    tasks.start_soon(call, i)
        assert sorted(results) == list(range(10))
        for i, out in results.items():
            assert out["text"] == f"caller {i}"
            assert out["pid"] == pid
            assert 1 <= out["active"] <= 4
        # Runs overlapped, four at a time (not one after the other), never more.
        assert max(out["peak"] for out in results.values()) == 4


async def test_max_concurrency_one_serialises(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async")
        results = []

        async def call(i: int) -> None:
            results.append(await app.run({"text": str(i), "delay": 0.05}))

        async with anyio.create_task_group() as tasks:
            for i in range(5):
                tasks.start_soon(call, i)
        assert {out["peak"] for out in results} == {1}
        assert sorted(out["text"] for out in results) == ["0", "1", "2", "3", "4"]


async def test_replicas_spread_requests_over_two_children(apps_dir: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", replicas=2)
        pids = app.status()["pids"]
        assert len(set(pids)) == 2
        assert [r["state"] for r in app.status()["replicas"]] == ["ready", "ready"]
        seen: list[int] = []

        async def call(i: int) -> None:
            out = await app.run({"text": str(i), "delay": 0.2, "gate": str(gate)})
            seen.append(out["pid"])

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                for i in range(6):
                    tasks.start_soon(call, i)
                # Both children run at once: the first two calls went one to each.
                await wait_for(lambda: in_flight(app) == 2)
                gate.touch()
        assert set(seen) == set(pids)
        assert min(seen.count(pids[0]), seen.count(pids[1])) >= 2


async def test_calls_one_after_the_other_take_turns_over_the_replicas(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", replicas=2)
        pids = app.status()["pids"]
        seen = [(await app.run({"text": str(i)}))["pid"] for i in range(6)]
        assert seen.count(pids[0]) == seen.count(pids[1]) == 3


async def test_a_slow_request_does_not_hold_up_others_on_an_idle_replica(
    apps_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", replicas=2)
        slow = app.submit({"text": "slow", "gate": str(gate)})
        await wait_for(lambda: in_flight(app) == 1)
        quick = [app.submit({"text": str(i)}) for i in range(4)]
        with anyio.fail_after(30):
            outputs = [await outcome(r) for r in quick]
        assert [o["text"] for o in outputs] == ["0", "1", "2", "3"]
        assert not slow.finished
        gate.touch()
        assert (await outcome(slow))["text"] == "slow"


async def test_full_queue_answers_busy(apps_dir: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", max_concurrency=1, queue_size=1)
        running = app.submit({"text": "running", "gate": str(gate)})
        await wait_for(lambda: in_flight(app) == 1)
        waiting = app.submit({"text": "waiting"})
        with anyio.fail_after(30), pytest.raises(BusyError) as info:
            await app.run({"text": "one too many"})
        # Immediate: answered while the queue is still full (the gate holds it so).
        assert not running.finished and not waiting.finished, "BusyError must be immediate"
        assert info.value.to_dict()["type"] == "busy"
        assert app.status()["queued"] == 1
        gate.touch()
        assert (await outcome(running))["text"] == "running"
        assert (await outcome(waiting))["text"] == "waiting"
        # Room again.
        assert (await app.run({"text": "later"}))["text"] == "later"


async def test_cancel_a_hung_request_that_ignores_cancel(
    apps_dir: Path, wait_gone: Any, tmp_path: Path
) -> None:
    inside = tmp_path / "inside"
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        pid = app.status()["pids"][0]
        request = app.submit({"how": "hang", "started": str(inside)})
        await wait_for(inside.exists)
        started = time.monotonic()
        assert await app.cancel(request.id) is True
        # Killed after the cancel grace (0.5 s), not left hanging for 1000 s.
        with anyio.fail_after(30), pytest.raises(RequestCancelledError):
            await outcome(request)
        assert time.monotonic() - started >= 0.4, "killed before the cancel grace"
        assert wait_gone([pid], zombie_ok=False) == []
        out = await app.run({"how": "ok"})
        assert out["pid"] != pid
        assert app.status()["state"] == "ready"
        assert await app.cancel(request.id) is False, "already over"


async def test_cancel_a_request_that_honours_cancel_keeps_the_child(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async")
        pid = app.status()["pids"][0]
        results: list[Any] = []

        async def consume() -> None:
            try:
                async for _event in app.stream({"hang": True}, request_id="mine"):
                    pass
            except RequestCancelledError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consume)
            await wait_for(lambda: in_flight(app) == 1)
            with anyio.fail_after(30):
                assert await app.cancel("mine") is True
                await wait_for(lambda: bool(results))
        assert isinstance(results[0], RequestCancelledError)
        out = await app.run({"text": "after"})
        assert out["pid"] == pid
        assert app.status()["restarts"] == 0


async def test_cancel_a_queued_request_fails_it_at_once(apps_dir: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", max_concurrency=1)
        running = app.submit({"text": "running", "gate": str(gate)})
        await wait_for(lambda: in_flight(app) == 1)
        queued = app.submit({"text": "queued"})
        assert await app.cancel(queued.id) is True
        with anyio.fail_after(30), pytest.raises(RequestCancelledError):
            await outcome(queued)
        # At once: not after the running request (which the gate holds).
        assert not running.finished
        gate.touch()
        assert (await outcome(running))["text"] == "running"
        assert (await app.run({"text": "next"}))["text"] == "next"


async def test_cancel_unknown_request(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async")
        assert await app.cancel("no-such-request") is False


async def test_request_ids_must_be_unique(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async")
        first = app.submit({"text": "a", "delay": 0.3}, request_id="dup")
        with pytest.raises(InputValidationError):
            app.submit({"text": "b"}, request_id="dup")
        assert (await outcome(first))["text"] == "a"


async def test_abandoning_a_stream_cancels_its_request(apps_dir: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "multi")
        with anyio.fail_after(30):
            async for event in app.stream({"n": 100, "delay": 0.05}, function="count"):
                assert event.output["n"] == 1
                break
            await wait_for(lambda: in_flight(app) == 0)
        out = await app.run({"name": "Ada"})
        assert out["greeting"] == "Hello, Ada"
        assert app.status()["restarts"] == 0


# -- a caller served in its own task (App.run on a free replica) ------------------------


async def test_a_cancelled_caller_leaves_its_request_to_the_replica_until_the_child_lets_go(
    apps_dir: Path,
) -> None:
    """The request keeps its place on the child after its caller is gone: a request
    that ignores its cancel holds the only seat until the child is killed for it, so
    the next request runs on a new child, never beside it."""
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_crashy", max_concurrency=1)
        pid = app.status()["pids"][0]
        gone: list[BaseException] = []

        async def caller(scope: anyio.CancelScope) -> None:
            with scope:
                try:
                    await app.run({"how": "hang"})
                except BaseException as exc:
                    gone.append(exc)
                    raise

        scope = anyio.CancelScope()
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(caller, scope)
                await wait_for(lambda: in_flight(app) == 1)
                scope.cancel()
        assert isinstance(gone[0], anyio.get_cancelled_exc_class())
        assert in_flight(app) == 1, "the child still has the request"
        with anyio.fail_after(30):
            out = await app.run({"how": "ok"})
        assert out["pid"] != pid
        assert app.status()["restarts"] == 1
        assert in_flight(app) == 0


async def test_a_cancelled_caller_whose_request_honours_the_cancel_frees_its_seat(
    apps_dir: Path,
) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", max_concurrency=1)
        pid = app.status()["pids"][0]
        with anyio.move_on_after(0.3):
            await app.run({"hang": True})
        with anyio.fail_after(30):
            out = await app.run({"text": "next"})
        assert (out["pid"], out["peak"], out["active"]) == (pid, 1, 1)
        assert app.status()["restarts"] == 0


async def _hold_reaping(app: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, anyio.Event]:
    """Kill the app's child and keep the replica from reaping it until the event is
    set: the replica still shows it ready, but its pipes are already closed."""
    child = app.replicas[0].child
    assert child is not None
    reap = anyio.Event()
    real_wait = child.process.wait

    async def held_wait() -> Any:
        await reap.wait()
        return await real_wait()

    monkeypatch.setattr(child.process, "wait", held_wait)
    child.process.kill()
    with anyio.fail_after(30):
        await child.channel.closed.wait()
        await anyio.sleep(0.05)  # the channel's owner closes the pipes
    assert app.status()["state"] == "ready"
    return child, reap


async def test_a_request_whose_child_died_before_it_was_sent_runs_on_the_next_child(
    apps_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller takes the child the replica still shows ready, but cannot write to
    it: the request goes back to the queue and is served by the replacement."""
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", max_concurrency=1)
        child, reap = await _hold_reaping(app, monkeypatch)
        results: list[Any] = []

        async def caller() -> None:
            results.append(await app.run({"text": "after"}))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(caller)
            await wait_for(lambda: in_flight(app) == 1)  # taken by the caller
            reap.set()
        assert results[0]["text"] == "after"
        assert results[0]["pid"] != child.process.pid
        assert app.status()["restarts"] == 1


async def test_a_request_cancelled_while_its_child_dies_unsent_is_not_run_later(
    apps_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(apps_dir / "sup_async", max_concurrency=1)
        _, reap = await _hold_reaping(app, monkeypatch)
        errors: list[Exception] = []

        async def caller() -> None:
            try:
                await app.run({"text": "x", "delay": 0.5}, request_id="x")
            except RequestCancelledError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(caller)
            await wait_for(lambda: in_flight(app) == 1)
            assert await app.cancel("x") is True
            reap.set()
        assert len(errors) == 1
        await wait_for(lambda: app.status()["state"] == "ready")
        await anyio.sleep(0.1)
        assert in_flight(app) == 0, "the cancelled request must not run on the new child"
        assert (await app.run({"text": "next"}))["active"] == 1


async def test_a_caller_cancelled_before_its_request_was_sent_leaves_nothing_behind(
    apps_dir: Path, tmp_path: Path
) -> None:
    """The child's loop is held and its stdin is full, so the caller waits to send;
    cancelled there, its request ends at once and frees its place."""
    async with make_supervisor(shared_memory=0) as sup:
        app = await sup.start(apps_dir / "sup_async", max_concurrency=3)
        inside = tmp_path / "inside"
        blocker = app.submit({"text": "blocker", "block": 1.0, "started": str(inside)})
        await wait_for(inside.exists)  # inside time.sleep: the child reads nothing
        big = app.submit({"text": "x" * (8 << 20)})  # fills the pipe and the write buffer
        await wait_for(lambda: in_flight(app) == 2)
        with anyio.move_on_after(0.3) as waited:
            await app.run({"text": "never sent"}, request_id="c")
        assert waited.cancelled_caught
        assert await app.cancel("c") is False, "the request must be over, not left behind"
        assert (await outcome(blocker))["text"] == "blocker"
        assert len((await outcome(big))["text"]) == 8 << 20
        out = await app.run({"text": "after"})
        assert out["peak"] <= 3
        assert in_flight(app) == 0


@pytest.mark.parametrize("standby", [False, True], ids=["", "standby"])
async def test_callers_that_give_up_and_children_that_die_leave_nothing_behind(
    apps_dir: Path, standby: bool
) -> None:
    """Many callers, some giving up mid-call, on two replicas whose children are
    killed now and then: every call ends one of three known ways, no replica ever
    runs more than its max_concurrency, and afterwards nothing is in flight, queued
    or remembered. With standbys, the kills hit them too, and restarts use those
    that are loaded (test_standby.py shows that deterministically)."""
    rng = random.Random(7)
    async with make_supervisor(restart_policy=RestartPolicy(max_restarts=100, window=1)) as sup:
        app = await sup.start(
            apps_dir / "sup_async", replicas=2, max_concurrency=2, standby=standby
        )
        ids: list[str] = []
        outcomes: dict[str, int] = {"ok": 0, "crashed": 0, "gave_up": 0}
        peaks: list[int] = []

        async def caller(c: int) -> None:
            for i in range(25):
                request_id = f"c{c}-{i}"
                ids.append(request_id)
                with anyio.move_on_after(rng.choice([0.005, 0.02, 2.0])) as waited:
                    try:
                        out = await app.run(
                            {"text": request_id, "delay": rng.choice([0.002, 0.01, 0.03])},
                            request_id=request_id,
                        )
                    except ChildCrashedError:
                        outcomes["crashed"] += 1
                        continue
                    assert out["text"] == request_id
                    peaks.append(out["peak"])
                    outcomes["ok"] += 1
                if waited.cancelled_caught:
                    outcomes["gave_up"] += 1

        killed: set[int] = set()

        async def killer() -> None:
            for _ in range(5 if standby else 3):
                await anyio.sleep(0.1)
                pids = app.status()["pids"]
                spares = [r["standby_pid"] for r in app.status()["replicas"] if r["standby_pid"]]
                pids = [*pids, *spares]
                if pids:
                    pid = rng.choice(pids)
                    killed.add(pid)
                    # The app's process may be dead already, its reaper not yet reaped.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            status = app.status()
            states = {r["state"] for r in status["replicas"]}
            return states == {"ready"} and not killed & set(status["pids"])

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(killer)
                for c in range(6):
                    tasks.start_soon(caller, c)
            await wait_for(lambda: in_flight(app) == 0)
            await wait_for(replaced)
        assert sum(outcomes.values()) == len(ids) == 150
        assert outcomes["ok"] > 0 and outcomes["gave_up"] > 0
        assert max(peaks) <= 2
        assert app.status()["queued"] == 0
        for request_id in ids:
            assert await app.cancel(request_id) is False, f"{request_id} was left behind"
        assert (await app.run({"text": "still serving"}))["text"] == "still serving"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_setup_changes_kills_and_a_stop_mid_stream_end_every_call_cleanly(
    apps_dir: Path, seed: int
) -> None:
    """Callers alternate between two sets of setup values on two replicas while
    children are killed, then the app is stopped with calls in flight and queued.
    Every call ends a known way, and one that succeeds ran under its own setup
    values; the stop ends the app (no illegal transition escapes a task group)."""
    rng = random.Random(seed)
    async with make_supervisor(restart_policy=RestartPolicy(max_restarts=100, window=1)) as sup:
        app = await sup.start(apps_dir / "sup_async", replicas=2, max_concurrency=2)
        outcomes: dict[str, int] = {"ok": 0, "crashed": 0, "stopped": 0, "gave_up": 0}
        calls = 0
        stop_at = rng.uniform(0.3, 0.8)

        async def caller(c: int) -> None:
            nonlocal calls
            for i in range(40):
                calls += 1
                tag = rng.choice(["a", "b"])
                with anyio.move_on_after(rng.choice([0.01, 2.0])) as waited:
                    try:
                        out = await app.run(
                            {"text": f"c{c}-{i}", "delay": rng.choice([0.0, 0.005, 0.02])},
                            setup={"tag": tag},
                        )
                    except ChildCrashedError:
                        outcomes["crashed"] += 1
                        continue
                    except (AppStoppedError, AppFailedError):
                        outcomes["stopped"] += 1
                        return
                    assert out["tag"] == tag
                    outcomes["ok"] += 1
                if waited.cancelled_caught:
                    outcomes["gave_up"] += 1

        async def killer() -> None:
            while True:
                await anyio.sleep(rng.uniform(0.05, 0.15))
                pids = app.status()["pids"]
                if pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rng.choice(pids), signal.SIGKILL)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(killer)
                async with anyio.create_task_group() as callers:
                    for c in range(6):
                        callers.start_soon(caller, c)
                    await anyio.sleep(stop_at)
                    await app.stop()
                tasks.cancel_scope.cancel()
        assert app.status()["state"] == "stopped"
        assert app.status()["pids"] == []
        assert sum(outcomes.values()) == calls, outcomes
        assert outcomes["stopped"] > 0, outcomes  # the stop came with calls under way
