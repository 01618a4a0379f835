"""A request's failure is that request's alone (issue 14), through the library.

Deep or huge values, bad setup values, clients that time out or cancel, a
frozen child: each fails the request it belongs to with a structured error,
and the app keeps serving (or comes back by itself).
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from sup_helpers import make_supervisor, only_pid, outcome, wait_for

from supervisor import RestartPolicy
from supervisor.core.input_limits import InputLimits
from supervisor.errors import (
    AppFailedError,
    ChildCrashedError,
    InputValidationError,
    RequestTimeoutError,
    SetupFailedError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]


def nested(levels: int) -> Any:
    value: Any = "a"
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture
def robust(apps_dir: Path) -> Path:
    return apps_dir / "robust"


# -- values that are too deep or too large ------------------------------------------


@pytest.mark.parametrize("levels", [500, 100_000])
async def test_deep_input_fails_alone(robust: Path, levels: int) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(robust)
        with pytest.raises(InputValidationError) as info:
            await app.run({"text": "a", "extra": nested(levels)})
        assert info.value.errors[0]["type"] == "limit.max_depth"
        with pytest.raises(InputValidationError):
            app.submit({"text": "a", "extra": nested(levels)})
        with pytest.raises(InputValidationError):
            await app.run({"text": "a"}, setup={"greeting": nested(levels)})
        assert (await app.run({"text": "Ada"}))["text"] == "Hello, Ada"
        assert app.status()["state"] == "ready"


async def test_a_value_the_encoder_cannot_take_fails_only_its_request(robust: Path) -> None:
    """Past the edge's limits (raised here on purpose), the encoder's own failure
    (a RecursionError inside msgpack or the blob walk) is still this request's."""
    async with make_supervisor() as sup:
        app = await sup.start(robust)
        app.limits = InputLimits(max_depth=10**9, max_values=10**9)
        pid = only_pid(app)
        for submit in (False, True):
            with pytest.raises(InputValidationError, match="cannot be sent"):
                if submit:
                    await outcome(app.submit({"extra": nested(5000)}))
                else:
                    await app.run({"extra": nested(5000)})
        assert (await app.run({"text": "Ada"}))["pid"] == pid
        assert app.status()["restarts"] == 0


async def test_too_many_values_are_refused(robust: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(robust)
        app.limits = InputLimits(max_values=1000)
        with pytest.raises(InputValidationError) as info:
            await app.run({"extra": list(range(5000))})
        assert info.value.errors[0]["type"] == "limit.max_values"
        assert (await app.run({"extra": list(range(10))}))["text"] == "Hello, "


# -- setup values -------------------------------------------------------------------


async def test_an_invalid_setup_changes_nothing(robust: Path) -> None:
    """The running child checks the values before anything is replaced."""
    async with make_supervisor() as sup:
        app = await sup.start(robust, setup={"greeting": "Hi"})
        pid = only_pid(app)
        with pytest.raises(InputValidationError) as info:
            await app.run({"text": "x"}, setup={"greeting": 5})
        assert info.value.errors[0]["loc"] == ["greeting"]
        assert app.setup == {"greeting": "Hi"}
        assert app.status()["state"] == "ready"
        assert await app.run({"text": "Ada"}) == {"text": "Hi, Ada", "pid": pid}
        assert app.status()["restarts"] == 0


async def test_a_setup_that_fails_sends_the_replica_back_to_its_good_values(robust: Path) -> None:
    """Valid values whose setup raises cost a child; the replica then serves the
    values that worked again, without waiting for a request."""
    async with make_supervisor() as sup:
        app = await sup.start(robust, setup={"greeting": "Hi"})
        with pytest.raises(SetupFailedError):
            await app.run({"text": "x"}, setup={"greeting": "explode"})
        assert app.setup == {"greeting": "Hi"}
        await wait_for(lambda: app.status()["state"] == "ready")
        assert (await app.run({"text": "Ada"}))["text"] == "Hi, Ada"


async def test_a_valid_setup_becomes_the_current_configuration(robust: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(robust, setup={"greeting": "Hi"})
        out = await app.run({"text": "Ada"}, setup={"greeting": "Bonjour"})
        assert out["text"] == "Bonjour, Ada"
        assert app.setup == {"greeting": "Bonjour"}
        assert (await app.run({"text": "Ada"}))["text"] == "Bonjour, Ada"


async def test_a_locked_setup_refuses_other_values(robust: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(robust, setup={"greeting": "Hi"}, lock_setup=True)
        pid = only_pid(app)
        with pytest.raises(InputValidationError, match="locked"):
            await app.run({"text": "x"}, setup={"greeting": "Bonjour"})
        out = await app.run({"text": "Ada"}, setup={"greeting": "Hi"})
        assert out == {"text": "Hi, Ada", "pid": pid}


async def test_bad_setup_values_during_a_restart_are_not_the_apps_fault(robust: Path) -> None:
    """With no child to check them, values sent while the replica restarts are
    tried by a new child; their failure is the caller's, never counted."""
    policy = RestartPolicy(max_restarts=1, window=60)
    async with make_supervisor(restart_policy=policy, cancel_grace=0.3) as sup:
        app = await sup.start(robust, setup={"greeting": "Hi"})
        # Its child is killed once the timeout's cancel is ignored; the bad values
        # wait behind it in the queue and find the replica restarting.
        doomed = app.submit({"seconds": 30}, function="sync_sleep", timeout=0.3)
        bad = [app.submit({"text": "x"}, setup={"greeting": 5}) for _ in range(3)]
        with pytest.raises(RequestTimeoutError):
            await outcome(doomed)
        for request in bad:
            with pytest.raises((InputValidationError, SetupFailedError)):
                await outcome(request)
        await wait_for(lambda: app.status()["state"] == "ready")
        assert (await app.run({"text": "Ada"}))["text"] == "Hi, Ada"
        assert "restart_failed" not in app.status()["restarts_by_reason"]


# -- timeouts belong to the operator ----------------------------------------------


async def test_a_callers_timeout_cannot_lengthen_the_operators(robust: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(robust, run_timeout=0.5)
        with anyio.fail_after(30), pytest.raises(RequestTimeoutError):
            await app.run({"seconds": 5}, function="nap", timeout=100_000)
        with pytest.raises(RequestTimeoutError):
            await app.run({"seconds": 5}, function="nap", timeout=0.2)


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0, 0, True, "5"])
async def test_a_bad_timeout_is_refused(robust: Path, timeout: Any) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(robust)
        with pytest.raises(InputValidationError, match="timeout"):
            await app.run({"text": "x"}, timeout=timeout)


# -- restart accounting -------------------------------------------------------------


async def test_kills_the_supervisor_orders_do_not_fail_the_app(robust: Path) -> None:
    """Timeouts of a function that ignores cancels get its child killed each time;
    none of them is the app's fault, however many there are."""
    policy = RestartPolicy(max_restarts=1, window=60)
    async with make_supervisor(restart_policy=policy, cancel_grace=0.2) as sup:
        app = await sup.start(robust)
        for killed in range(1, 5):
            with pytest.raises(RequestTimeoutError):
                await app.run({"seconds": 30}, function="sync_sleep", timeout=0.2)
            await wait_for(
                lambda n=killed: (
                    app.status()["restarts"] == n  # type: ignore[misc]
                    and app.status()["state"] == "ready"
                )
            )
        status = app.status()
        assert status["state"] == "ready"
        assert status["restarts_by_reason"] == {"timeout": 4}
        assert status["replicas"][0]["last_exit"]["fault"] is False
        assert (await app.run({"text": "Ada"}))["text"] == "Hello, Ada"


async def test_a_failed_app_is_tried_again_after_its_cooldown(apps_dir: Path) -> None:
    policy = RestartPolicy(max_restarts=1, window=60, cooldown=1.0)
    async with make_supervisor(restart_policy=policy) as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        for _ in range(2):
            with pytest.raises(ChildCrashedError):
                await app.run({"how": "exit"})
            await wait_for(lambda: app.status()["state"] in ("ready", "failed"))
        replica = app.status()["replicas"][0]
        assert replica["state"] == "failed"
        assert replica["failure_limit"] == "restarts"
        assert replica["retry_at"] is not None
        with pytest.raises(AppFailedError) as info:
            await app.run({"how": "ok"})
        assert "tried again in" in info.value.message
        assert info.value.details["limit"] == "restarts"
        await wait_for(lambda: app.status()["state"] == "ready")
        assert (await app.run({"how": "ok"}))["pid"] == only_pid(app)
        assert app.status()["replicas"][0]["failure"] is None


async def test_an_operator_restarts_a_failed_app_at_once(apps_dir: Path) -> None:
    policy = RestartPolicy(max_restarts=0, window=60, cooldown=3600)
    async with make_supervisor(restart_policy=policy) as sup:
        app = await sup.start(apps_dir / "sup_crashy")
        with pytest.raises(ChildCrashedError):
            await app.run({"how": "exit"})
        await wait_for(lambda: app.status()["state"] == "failed")
        with anyio.fail_after(30):
            await app.restart()
        assert app.status()["state"] == "ready"
        assert (await app.run({"how": "ok"}))["pid"] == only_pid(app)


async def test_an_operator_restart_replaces_a_running_child(robust: Path) -> None:
    async with make_supervisor() as sup:
        app = await sup.start(robust)
        pid = only_pid(app)
        with anyio.fail_after(30):
            await app.restart()
        assert only_pid(app) != pid
        assert (await app.run({"text": "Ada"}))["text"] == "Hello, Ada"


# -- liveness of busy children --------------------------------------------------------


async def test_a_busy_child_blocking_its_loop_still_answers_heartbeats(robust: Path) -> None:
    async with make_supervisor(heartbeat_interval=0.2, heartbeat_timeout=1.0) as sup:
        app = await sup.start(robust)
        pid = only_pid(app)
        out = await app.run({"seconds": 3.0}, function="block_loop")
        assert out["pid"] == pid
        assert app.status()["restarts"] == 0


async def test_a_frozen_busy_child_is_killed_and_its_request_fails(
    robust: Path, wait_gone: Any
) -> None:
    async with make_supervisor(heartbeat_interval=0.2, heartbeat_timeout=1.0) as sup:
        app = await sup.start(robust)
        pid = only_pid(app)
        request = app.submit({"seconds": 60}, function="nap")
        await wait_for(lambda: app.status()["replicas"][0]["in_flight"] == 1)
        os.kill(pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(30), pytest.raises(ChildCrashedError, match="heartbeat"):
                await outcome(request)
        finally:
            if wait_gone([pid], timeout=0):
                os.kill(pid, signal.SIGCONT)
        await wait_for(lambda: app.status()["state"] == "ready")
        assert only_pid(app) != pid
        assert app.status()["replicas"][0]["last_exit"]["fault"] is True


async def test_a_request_is_not_handed_to_a_frozen_child(robust: Path, wait_gone: Any) -> None:
    """A frozen idle child: the request waits for the heartbeat's verdict and runs
    on the next child instead of hanging on the frozen one."""
    async with make_supervisor(heartbeat_interval=0.2, heartbeat_timeout=2.0) as sup:
        app = await sup.start(robust)
        pid = only_pid(app)
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_for(
                lambda: app.replicas[0].child is not None and app.replicas[0].child.suspect
            )
            with anyio.fail_after(30):
                out = await app.run({"text": "Ada"})
        finally:
            if wait_gone([pid], timeout=0):
                os.kill(pid, signal.SIGCONT)
        assert out["pid"] != pid
