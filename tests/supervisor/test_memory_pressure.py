"""End-to-end memory policies through the public API, with the fake NVML backend.

Each test writes a fake NVML file describing the GPUs; the ``mem_gpu`` test app
records the VRAM it "holds" in that file under its own pid, exactly as NVML
would report a real process.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import anyio
import psutil
import pytest
from sup_helpers import wait_for

from supervisor import App, Supervisor
from supervisor import errors as E

APP = Path(__file__).resolve().parent.parent / "apps" / "mem_gpu"
MIB = 1024 * 1024
GIB = 1024 * MIB


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def supervisor(**kwargs) -> Supervisor:
    """Fast sampling and short graces; no pool, whose idle children would only take
    CPU from the ones under test."""
    kwargs.setdefault("pool_size", 0)
    kwargs.setdefault("monitor_interval", 0.05)
    kwargs.setdefault("budget_grace", 0.5)
    kwargs.setdefault("cancel_grace", 0.5)
    kwargs.setdefault("admission_timeout", 1.0)
    return Supervisor(**kwargs)


@pytest.mark.anyio
async def test_gpu_figures_reach_status(fake_gpus) -> None:
    fake_gpus(16384, 8192)
    async with supervisor() as sup:
        app = await sup.start(APP, gpus=1, setup={"vram_mib": 3072})
        pid = app.status()["pids"][0]
        status = await wait_for(
            lambda: (
                (s := app.status())["replicas"][0]["memory"]
                and s["replicas"][0]["memory"]["vram"] == 3072 * MIB
                and s
            )
        )
        replica = status["replicas"][0]
        assert replica["pid"] == pid
        assert replica["gpus"] == [0]  # the device with the most free memory
        assert replica["memory"]["rss"] > 0
        gpus = sup.status()["gpus"]
        assert gpus[0]["used"] == 3072 * MIB
        assert gpus[0]["free"] == (16384 - 3072) * MIB
        assert gpus[0]["promised"] == 0  # no VRAM budget declared
        assert gpus[1]["used"] == 0


@pytest.mark.anyio
async def test_over_vram_budget_is_stopped_and_restarted(fake_gpus) -> None:
    fake_gpus(16384)
    async with supervisor() as sup:
        app = await sup.start(APP, gpus=1, vram_budget=2 * GIB)
        first = await app.run({"vram_mib": 1024})
        assert first["gpus"] == "0"
        with pytest.raises(E.BudgetExceededError) as caught:
            # Holds 4 GiB and stays busy longer than the budget grace: killed mid-request.
            await app.run({"vram_mib": 4096, "sleep": 30})
        assert caught.value.details["budget"] == "vram"
        assert caught.value.details["used"] == 4096 * MIB
        assert caught.value.details["limit"] == 2 * GIB
        second = await app.run({})
        assert second["pid"] != first["pid"]
        status = app.status()
        assert status["restarts"] == 1
        assert "VRAM" in status["last_exit"]["reason"]
        assert "budget" in status["last_exit"]["reason"]
        assert not psutil.pid_exists(first["pid"]) or psutil.Process(first["pid"]).status() == (
            psutil.STATUS_ZOMBIE
        )


@pytest.mark.anyio
async def test_idle_child_over_budget_is_restarted_without_a_request(fake_gpus) -> None:
    fake_gpus(16384)
    async with supervisor() as sup:
        app = await sup.start(APP, gpus=1, vram_budget=1 * GIB, setup={"vram_mib": 2048})
        old = app.status()["pids"]
        await wait_for(lambda: app.status()["restarts"] >= 1)
        # The fresh child records 2 GiB again in setup, so it keeps being replaced;
        # what matters here is that the reason is shown.
        assert "over its budget" in app.status()["last_exit"]["reason"]
        assert app.status()["pids"] != old or app.status()["state"] != "ready"


@pytest.mark.anyio
async def test_pressure_evicts_least_recently_used_idle_child(fake_gpus) -> None:
    fake_gpus(10240)
    async with supervisor(min_free_vram=2 * GIB) as sup:
        a = await sup.start(APP, name="a", gpus=[0])
        b = await sup.start(APP, name="b", gpus=[0])
        await a.run({"vram_mib": 3072})
        await b.run({"vram_mib": 3072})  # b used last: a is the LRU one
        c = await sup.start(APP, name="c", gpus=[0])
        await c.run({"vram_mib": 3072})  # now 1 GiB free: below the 2 GiB threshold
        await wait_for(lambda: a.status()["state"] == "unloaded")
        assert b.status()["state"] == "ready"
        assert c.status()["state"] == "ready"
        assert "pressure" in a.status()["replicas"][0]["state_reason"]
        # An evicted app starts again on its next request.
        out = await a.run({})
        assert out["gpus"] == "0"
        assert a.status()["state"] == "ready"


@pytest.mark.anyio
async def test_busy_child_is_not_evicted_for_pressure(fake_gpus) -> None:
    fake_gpus(8192)
    async with supervisor(min_free_vram=4 * GIB) as sup:
        app = await sup.start(APP, gpus=1)
        async with anyio.create_task_group() as tasks:
            results = []

            async def busy() -> None:
                results.append(await app.run({"vram_mib": 6144, "sleep": 1.0}))

            tasks.start_soon(busy)
            await anyio.sleep(0.6)  # many samples while under pressure and busy
            assert app.status()["state"] == "busy"
            pid = app.status()["pids"][0]
        # The same child answered (once idle, the next sample may unload it at once).
        assert results and results[0]["pid"] == pid
        # Idle now and still under pressure: the next samples unload it.
        await wait_for(lambda: app.status()["state"] == "unloaded")


@pytest.mark.anyio
async def test_admission_evicts_idle_children_to_make_room(fake_gpus) -> None:
    fake_gpus(8192)
    async with supervisor() as sup:
        old = await sup.start(APP, name="old", gpus=1, setup={"vram_mib": 6144})
        await wait_for(lambda: (sup.status()["gpus"] or [{}])[0].get("used") == 6144 * MIB)
        new = await sup.start(APP, name="new", gpus=1, vram_budget=4 * GIB)
        assert old.status()["state"] == "unloaded"
        assert new.status()["state"] == "ready"
        assert (await new.run({}))["gpus"] == "0"


@pytest.mark.anyio
async def test_admission_that_cannot_fit_fails_after_its_deadline(fake_gpus) -> None:
    fake_gpus(8192, 8192)
    async with supervisor(admission_timeout=0.5) as sup:
        busy = await sup.start(APP, name="busy", gpus=[0, 1])
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(busy.run, {"vram_mib": 6144, "sleep": 2.0})
            await wait_for(lambda: (sup.status()["gpus"] or [{}])[0].get("used") == 6144 * MIB)
            started = anyio.current_time()
            with pytest.raises(E.AdmissionError) as caught:
                await sup.start(APP, name="big", gpus=1, vram_budget=4 * GIB)
            assert anyio.current_time() - started >= 0.5
            message = str(caught.value)
            assert "4.0 GiB" in message or "4096" in message
            assert caught.value.details["needed_vram"] == 4 * GIB
            assert caught.value.details["free"] == {0: 2048 * MIB, 1: 2048 * MIB}
        assert "big" not in sup.apps


@pytest.mark.anyio
async def test_admission_on_explicit_gpus_evicts_idle_children_there(fake_gpus) -> None:
    fake_gpus(8192, 8192)
    async with supervisor() as sup:
        old = await sup.start(APP, name="old", gpus=[0], setup={"vram_mib": 6144})
        other = await sup.start(APP, name="other", gpus=[1], setup={"vram_mib": 6144})
        await wait_for(lambda: sum(g["used"] for g in sup.status()["gpus"]) == 12288 * MIB)
        new = await sup.start(APP, name="new", gpus=[1], vram_budget=4 * GIB)
        assert other.status()["state"] == "unloaded"  # the GPU it was pinned to
        assert old.status()["state"] == "ready"
        assert (await new.run({}))["gpus"] == "1"


@pytest.mark.anyio
async def test_explicit_gpus_without_room_fail_even_if_another_gpu_has_it(fake_gpus) -> None:
    fake_gpus(8192, 8192)
    async with supervisor(admission_timeout=0.3) as sup:
        busy = await sup.start(APP, name="busy", gpus=[0])
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(busy.run, {"vram_mib": 6144, "sleep": 1.5})
            await wait_for(lambda: (sup.status()["gpus"] or [{}])[0].get("used") == 6144 * MIB)
            with pytest.raises(E.AdmissionError) as caught:
                await sup.start(APP, name="pinned", gpus=[0], vram_budget=4 * GIB)
            assert caught.value.details["free"] == {0: 2048 * MIB}
        assert "pinned" not in sup.apps


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("gpus", "vram_gib"), [(1, 16), ([0], 16), (3, 1)], ids=["too big", "too big here", "too many"]
)
async def test_an_app_that_can_never_fit_is_refused_at_once(
    fake_gpus, gpus: int | list[int], vram_gib: int
) -> None:
    fake_gpus(8192, 8192)
    async with supervisor(admission_timeout=60) as sup:
        with anyio.fail_after(30):  # a hang guard: waiting out the deadline would take 60 s
            with pytest.raises(E.AdmissionError) as caught:
                await sup.start(APP, name="never", gpus=gpus, vram_budget=vram_gib * GIB)
        assert str(caught.value).startswith("can never fit: needs")
        assert caught.value.details["total"] == {0: 8 * GIB, 1: 8 * GIB} or gpus == [0]
        assert "never" not in sup.apps


@pytest.mark.anyio
async def test_replicas_are_admitted_against_each_other(fake_gpus) -> None:
    fake_gpus(8192, 8192)
    async with supervisor() as sup:
        app = await sup.start(APP, gpus=1, replicas=2, vram_budget=6 * GIB)
        assert sorted(s["gpus"] for s in app.status()["replicas"]) == [[0], [1]]


@pytest.mark.anyio
async def test_replicas_that_do_not_fit_together_are_refused(fake_gpus) -> None:
    fake_gpus(8192)
    async with supervisor(admission_timeout=0.3) as sup:
        with pytest.raises(E.AdmissionError) as caught:
            await sup.start(APP, name="pair", gpus=[0], replicas=2, vram_budget=6 * GIB)
        assert caught.value.details["needed_vram"] == 6 * GIB
        assert caught.value.details["promised_to_earlier_replicas"] == {0: 6 * GIB}
        assert "earlier replicas will use: GPU 0: 6.0 GiB" in str(caught.value)
        with pytest.raises(E.AdmissionError):
            await sup.start(APP, name="pair", gpus=1, replicas=2, vram_budget=6 * GIB)
        assert not sup.apps
        one = await sup.start(APP, name="one", gpus=[0], vram_budget=6 * GIB)
        assert one.status()["ready"]


@pytest.mark.anyio
async def test_cuda_oom_fails_the_request_and_restarts_the_child(fake_gpus) -> None:
    fake_gpus(16384)
    async with supervisor() as sup:
        app = await sup.start(APP, gpus=1)
        before = await app.run({})
        with pytest.raises(E.OutOfMemoryError) as caught:
            await app.run({"cuda_oom": True})
        assert "CUDA out of memory" in str(caught.value)
        after = await app.run({})
        assert after["pid"] != before["pid"]
        assert app.status()["restarts"] == 1


@pytest.mark.anyio
async def test_ram_budget_stops_a_memory_hungry_child() -> None:
    async with supervisor() as sup:
        app = await sup.start(APP, ram_budget=300 * MIB)
        before = await app.run({})
        with pytest.raises(E.BudgetExceededError) as caught:
            await app.run({"hold_mib": 600, "sleep": 30})
        assert caught.value.details["budget"] == "ram"
        # At the budget where the kernel enforces it (a cgroup), over it where sampled.
        assert caught.value.details["used"] >= 300 * MIB
        after = await app.run({})
        assert after["pid"] != before["pid"]
        assert "RAM" in app.status()["last_exit"]["reason"]
        assert os.getpid() not in (before["pid"], after["pid"])


@pytest.mark.anyio
async def test_an_eviction_still_unloading_when_the_supervisor_exits_ends(fake_gpus) -> None:
    """The eviction's task outlives the app's own tasks; it must still see its child out."""
    fake_gpus(8192)
    with anyio.fail_after(30):
        async with supervisor(min_free_vram=4 * GIB) as sup:
            app = await sup.start(APP, gpus=1, setup={"unload_seconds": 1.0})
            out = await app.run({"vram_mib": 6144})  # idle from now on, and under pressure
            await wait_for(lambda: app.status()["state"] == "unloaded")
        # Left while the evicted child is still in its one-second unload.
    assert not psutil.pid_exists(out["pid"]) or psutil.Process(out["pid"]).status() == (
        psutil.STATUS_ZOMBIE
    )


@pytest.mark.anyio
async def test_a_vram_budget_is_per_gpu(fake_gpus) -> None:
    fake_gpus(8192, 8192)
    async with supervisor() as sup:
        app = await sup.start(APP, gpus=2, vram_budget=4 * GIB)
        # 3 GiB on each of its two GPUs: 6 GiB in all, within 4 GiB per GPU.
        first = await app.run({"vram_mib": 3072})
        assert first["gpus"] == "0,1"
        await wait_for(
            lambda: (app.status()["replicas"][0]["memory"] or {}).get("vram") == 6144 * MIB
        )
        for _ in range(5):
            await anyio.sleep(sup.monitor_interval)
        assert app.status()["restarts"] == 0
        with pytest.raises(E.BudgetExceededError) as caught:
            await app.run({"vram_mib": 5120, "sleep": 30})
        assert caught.value.details["used"] == 5120 * MIB
        assert caught.value.details["limit"] == 4 * GIB
        assert caught.value.details["device"] == 0
        assert "of VRAM on GPU 0, over its budget of 4.0 GiB" in str(caught.value)


@pytest.mark.anyio
async def test_a_busy_apps_unused_budget_is_not_admitted_to_another(fake_gpus) -> None:
    fake_gpus(8192)
    async with supervisor(admission_timeout=0.3) as sup:
        first = await sup.start(APP, name="first", gpus=1, vram_budget=6 * GIB)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first.run, {"vram_mib": 1024, "sleep": 2.0})
            await wait_for(lambda: sup.status()["gpus"][0]["used"] == 1024 * MIB)
            # 7 GiB are free, but 5 GiB of them are first's to grow into.
            with pytest.raises(E.AdmissionError) as caught:
                await sup.start(APP, name="second", gpus=1, vram_budget=4 * GIB)
            assert caught.value.details["free"] == {0: 7 * GIB}
            assert caught.value.details["promised"] == {0: 5 * GIB}
            assert sup.status()["gpus"][0]["promised"] == 5 * GIB
            assert "5.0 GiB of it promised to apps" in str(caught.value)
            tasks.cancel_scope.cancel()
        assert "second" not in sup.apps
        small = await sup.start(APP, name="small", gpus=1, vram_budget=2 * GIB)
        assert small.status()["ready"]


@pytest.mark.anyio
async def test_an_idle_apps_unused_budget_is_given_back_by_evicting_it(fake_gpus) -> None:
    fake_gpus(8192)
    async with supervisor() as sup:
        first = await sup.start(APP, name="first", gpus=1, vram_budget=6 * GIB)
        await first.run({"vram_mib": 1024})
        await wait_for(lambda: sup.status()["gpus"][0]["used"] == 1024 * MIB)
        second = await sup.start(APP, name="second", gpus=1, vram_budget=4 * GIB)
        assert first.status()["state"] == "unloaded"
        assert second.status()["state"] == "ready"


@pytest.mark.anyio
async def test_apps_starting_together_are_admitted_one_after_the_other(fake_gpus) -> None:
    fake_gpus(8192, 8192)
    async with supervisor() as sup:
        apps = {}

        async def start(name: str) -> None:
            # Neither has allocated anything when the other is admitted.
            apps[name] = await sup.start(APP, name=name, gpus=1, vram_budget=6 * GIB)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(start, "a")
            tasks.start_soon(start, "b")
        placed = sorted(app.status()["replicas"][0]["gpus"] for app in apps.values())
        assert placed == [[0], [1]]
        assert all(app.status()["state"] == "ready" for app in apps.values())


@pytest.mark.anyio
async def test_two_apps_of_one_name_starting_together_are_refused(fake_gpus) -> None:
    fake_gpus(8192)
    async with supervisor() as sup:
        outcomes: list[object] = []

        async def start() -> None:
            try:
                outcomes.append(await sup.start(APP, name="twin", gpus=1, vram_budget=GIB))
            except E.InputValidationError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(start)
            tasks.start_soon(start)
        refused = [o for o in outcomes if isinstance(o, E.InputValidationError)]
        assert len(refused) == 1 and "already running" in str(refused[0])
        assert len(sup.apps) == 1 and sup.apps["twin"].status()["ready"]


@pytest.mark.anyio
async def test_nothing_is_evicted_for_replicas_that_do_not_all_fit(fake_gpus) -> None:
    fake_gpus(8192, 8192)
    async with supervisor(admission_timeout=0.3) as sup:
        old = await sup.start(APP, name="old", gpus=[0], setup={"vram_mib": 6144})
        await wait_for(lambda: sup.status()["gpus"][0]["used"] == 6144 * MIB)
        # The first replica fits on GPU 1 and a second would fit on GPU 0 after
        # evicting old, but a third fits nowhere: old must stay.
        with pytest.raises(E.AdmissionError) as caught:
            await sup.start(APP, name="trio", gpus=1, replicas=3, vram_budget=6 * GIB)
        assert caught.value.details["promised_to_earlier_replicas"] == {0: 6 * GIB, 1: 6 * GIB}
        assert old.status()["state"] == "ready"
        assert old.status()["restarts"] == 0
        pair = await sup.start(APP, name="pair", gpus=1, replicas=2, vram_budget=6 * GIB)
        assert old.status()["state"] == "unloaded"  # evicted now that all of pair fits
        assert sorted(s["gpus"] for s in pair.status()["replicas"]) == [[0], [1]]


@pytest.mark.anyio
async def test_an_evicted_app_is_admitted_again_before_it_restarts(fake_gpus) -> None:
    fake_gpus(8192)
    async with supervisor() as sup:
        a = await sup.start(APP, name="a", gpus=1, vram_budget=6 * GIB, setup={"vram_mib": 6144})
        b = await sup.start(APP, name="b", gpus=1, vram_budget=6 * GIB, setup={"vram_mib": 6144})
        assert (a.status()["state"], b.status()["state"]) == ("unloaded", "ready")
        assert (a.status()["evictions"], a.status()["restarts"]) == (1, 0)
        assert a.status()["replicas"][0]["state_reason"] == "evicted to make room for b"
        assert a.status()["available"] and not a.status()["ready"]  # back on demand
        await wait_for(lambda: sup.status()["gpus"][0]["used"] == 6144 * MIB)
        # A request for a swaps the two: b is idle, so it makes room for a.
        assert (await a.run({}))["gpus"] == "0"
        assert (a.status()["state"], b.status()["state"]) == ("ready", "unloaded")
        assert b.status()["replicas"][0]["state_reason"] == "evicted to make room for a[0]"
        await wait_for(lambda: sup.status()["gpus"][0]["used"] == 6144 * MIB)
        assert (await b.run({}))["gpus"] == "0"
        assert (a.status()["state"], b.status()["state"]) == ("unloaded", "ready")
        assert (a.status()["evictions"], b.status()["evictions"]) == (2, 1)


@pytest.mark.anyio
async def test_an_evicted_app_waits_for_room_held_by_a_busy_one(fake_gpus) -> None:
    fake_gpus(8192)
    async with supervisor(admission_timeout=0.3) as sup:
        a, b = await _two_apps_for_one_gpu(sup)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(b.run, {"sleep": 1.0})
            await wait_for(lambda: b.status()["state"] == "busy")
            with pytest.raises(E.AdmissionError) as caught:
                await a.run({})
            assert caught.value.details["free"] == {0: 2 * GIB}
            assert a.status()["state"] == "unloaded"
            assert a.status()["restarts"] == 0
            assert a.status()["available"]  # no room yet, but nothing wrong with it
        assert (await a.run({}))["gpus"] == "0"  # b is idle again: it gives way
        assert b.status()["state"] == "unloaded"


@pytest.mark.anyio
async def test_an_evicted_app_restarts_unchecked_when_gpu_figures_fail(
    fake_gpus, caplog: pytest.LogCaptureFixture
) -> None:
    path = fake_gpus(8192)
    async with supervisor() as sup:
        a = await sup.start(APP, name="a", gpus=1, vram_budget=6 * GIB)
        await sup.start(APP, name="b", gpus=1, vram_budget=6 * GIB)
        assert a.status()["state"] == "unloaded"  # its unused budget made room for b
        path.write_text("not json")
        with caplog.at_level("WARNING", logger="supervisor.resources"):
            assert (await a.run({}))["gpus"] == "0"
        assert "no GPU figures" in caplog.text and "granted unchecked" in caplog.text


@pytest.mark.anyio
async def test_an_app_waiting_for_one_gpu_does_not_hold_up_one_for_another(fake_gpus) -> None:
    fake_gpus(8192, 8192)
    async with supervisor(admission_timeout=10) as sup:
        hog = await sup.start(APP, name="hog", gpus=[0])
        ready: dict[str, bool] = {}

        async def start(name: str, gpus: list[int]) -> None:
            app = await sup.start(APP, name=name, gpus=gpus, vram_budget=6 * GIB)
            ready[name] = bool(app.status()["ready"])

        holding = anyio.CancelScope()

        async def hold() -> None:
            with holding:
                await hog.run({"vram_mib": 6144, "sleep": 60})

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(hold)
            await wait_for(lambda: sup.status()["gpus"][0]["used"] == 6144 * MIB)
            tasks.start_soon(start, "waits", [0])  # the busy hog holds GPU 0
            await anyio.sleep(0.3)  # long enough for "waits" to be waiting for room
            await start("other", [1])
            assert ready == {"other": True}  # admitted while "waits" still waits
            holding.cancel()  # the hog's request ends; idle now, it makes room
        assert ready == {"other": True, "waits": True}
        assert hog.status()["state"] == "unloaded"


@pytest.mark.anyio
async def test_an_evicted_app_that_cannot_come_back_is_not_available(
    fake_gpus, tmp_path: Path
) -> None:
    fake_gpus(8192)
    app_dir = tmp_path / "breaks"
    shutil.copytree(APP, app_dir)
    async with supervisor() as sup:
        a = await sup.start(app_dir, name="a", gpus=1, vram_budget=6 * GIB)
        await sup.start(APP, name="b", gpus=1, vram_budget=6 * GIB)
        assert a.status()["available"] and not a.status()["ready"]
        (app_dir / "inference.py").write_text("raise RuntimeError('the model is gone')\n")
        with pytest.raises(E.LoadFailedError):
            await a.run({})
        assert not a.status()["available"]


async def _two_apps_for_one_gpu(sup: Supervisor) -> tuple[App, App]:
    """Apps a and b, 6 GiB each on the one 8 GiB GPU: b is loaded, a was evicted for it."""
    a = await sup.start(APP, name="a", gpus=1, vram_budget=6 * GIB, setup={"vram_mib": 6144})
    b = await sup.start(APP, name="b", gpus=1, vram_budget=6 * GIB, setup={"vram_mib": 6144})
    await wait_for(lambda: sup.status()["gpus"][0]["used"] == 6144 * MIB)
    return a, b


def _exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def debug(caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG records of the supervisor and of its apps' loggers (a server run earlier in
    this process may have set ``supervisor.app`` to INFO)."""
    for name in ("supervisor", "supervisor.app"):
        caplog.set_level(logging.DEBUG, logger=name)


@pytest.mark.anyio
async def test_a_swap_fetches_its_child_while_the_evicted_one_exits(
    fake_gpus, caplog: pytest.LogCaptureFixture
) -> None:
    """The child that will hold the requested app comes from the pool's fork server
    while the evicted app unloads; the app is loaded into it only once admitted."""
    fake_gpus(8192)
    debug(caplog)
    async with supervisor(pool_size=1) as sup:
        a, b = await _two_apps_for_one_gpu(sup)
        await wait_for(lambda: sum(sup.status()["pool"]["idle"].values()) == 1)
        evicted = b.status()["pids"][0]
        caplog.clear()
        assert (await a.run({}))["gpus"] == "0"
        lines = [r.getMessage() for r in caplog.records]
        fetched = next(i for i, m in enumerate(lines) if "fetched during the admission" in m)
        exited = next(i for i, m in enumerate(lines) if "a[0]" not in m and "exited" in m)
        assert fetched < exited, lines
        assert _exited(evicted)  # the evicted child's app process


@pytest.mark.anyio
async def test_a_child_fetched_for_an_admission_that_fails_is_stopped(
    fake_gpus, caplog: pytest.LogCaptureFixture
) -> None:
    fake_gpus(8192)
    debug(caplog)
    async with supervisor(pool_size=1, admission_timeout=0.3) as sup:
        a, b = await _two_apps_for_one_gpu(sup)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(b.run, {"sleep": 1.0})
            await wait_for(lambda: b.status()["state"] == "busy")
            await wait_for(lambda: sum(sup.status()["pool"]["idle"].values()) == 1)
            caplog.clear()
            with pytest.raises(E.AdmissionError):
                await a.run({})
            lines = [r.getMessage() for r in caplog.records]
            stopped = [m for m in lines if "not needed: stopped" in m]
            assert len(stopped) == 1, lines
            pid = int(stopped[0].split("child pid ")[1].split()[0])
            await wait_for(lambda: not psutil.pid_exists(pid))
        assert (await a.run({}))["gpus"] == "0"
