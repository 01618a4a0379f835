"""The replica lifecycle state machine: every state listed, illegal transitions raise."""

from __future__ import annotations

import logging

import pytest

from supervisor.core.lifecycle import LIVE, TRANSITIONS, IllegalTransition, Lifecycle, ReplicaState

S = ReplicaState


def test_every_state_has_a_transition_entry() -> None:
    assert set(TRANSITIONS) == set(ReplicaState)
    for state, targets in TRANSITIONS.items():
        assert targets <= set(ReplicaState)
        assert state not in targets, f"{state} lists itself"


def test_every_state_but_stopped_can_stop() -> None:
    for state in ReplicaState:
        if state in (S.STOPPING, S.STOPPED):
            continue
        assert S.STOPPING in TRANSITIONS[state], state
    assert TRANSITIONS[S.STOPPING] == frozenset({S.STOPPED})
    assert TRANSITIONS[S.STOPPED] == frozenset()


def test_every_state_is_reachable_from_unloaded() -> None:
    seen = {S.UNLOADED}
    frontier = [S.UNLOADED]
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(ReplicaState)


def test_failed_is_retried_or_stopped() -> None:
    assert TRANSITIONS[S.FAILED] == frozenset({S.RESTARTING, S.STOPPING})


def test_live_states() -> None:
    assert frozenset({S.STARTING, S.SETTING_UP, S.READY, S.BUSY}) == LIVE


def test_happy_path_and_crash_path() -> None:
    life = Lifecycle("app[0]")
    assert life.state is S.UNLOADED
    for state in (S.STARTING, S.SETTING_UP, S.READY, S.BUSY, S.READY, S.BUSY, S.RESTARTING):
        life.to(state, "why")
        assert life.state is state
        assert life.reason == "why"
    life.to(S.STARTING, "restart")
    life.to(S.FAILED, "gave up")
    life.to(S.STOPPING)
    life.to(S.STOPPED)
    assert life.state is S.STOPPED


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((), S.READY),
        ((), S.BUSY),
        ((), S.RESTARTING),
        ((S.STARTING,), S.BUSY),
        ((S.STARTING, S.SETTING_UP, S.READY), S.SETTING_UP),
        ((S.STARTING, S.SETTING_UP, S.READY), S.FAILED),
        ((S.STARTING, S.RESTARTING), S.READY),
        ((S.STARTING, S.FAILED), S.STARTING),
        ((S.STOPPING,), S.UNLOADED),
        ((S.STOPPING, S.STOPPED), S.STARTING),
        ((S.STOPPING, S.STOPPED), S.STOPPING),
    ],
)
def test_illegal_transitions_raise(path: tuple[ReplicaState, ...], illegal: ReplicaState) -> None:
    life = Lifecycle("app[0]")
    for state in path:
        life.to(state)
    before = (life.state, life.since, life.reason)
    with pytest.raises(IllegalTransition) as info:
        life.to(illegal, "because")
    assert "app[0]" in str(info.value)
    assert illegal.value in str(info.value)
    assert (life.state, life.since, life.reason) == before, "a refused transition changes nothing"


def test_every_pair_outside_the_table_raises() -> None:
    for source in ReplicaState:
        for target in ReplicaState:
            if target is source:
                continue
            life = Lifecycle("x", state=source)
            if target in TRANSITIONS[source]:
                life.to(target)
                assert life.state is target
            else:
                with pytest.raises(IllegalTransition):
                    life.to(target)


def test_same_state_is_a_no_op() -> None:
    life = Lifecycle("x", state=S.STOPPED)
    since = life.since
    life.to(S.STOPPED, "again")
    assert life.state is S.STOPPED
    assert life.since == since


def test_transitions_are_logged_with_reason(caplog: pytest.LogCaptureFixture) -> None:
    life = Lifecycle("app[1]")
    with caplog.at_level(logging.DEBUG, logger="supervisor.lifecycle"):
        life.to(S.STARTING, "first start")
    assert any(
        "app[1]" in r.getMessage()
        and "unloaded -> starting" in r.getMessage()
        and "first start" in r.getMessage()
        for r in caplog.records
    )


def test_ready_busy_flips_are_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    life = Lifecycle("app[0]", state=S.READY)
    with caplog.at_level(logging.INFO, logger="supervisor.lifecycle"):
        life.to(S.BUSY)
        life.to(S.READY)
    assert caplog.records == []
    assert life.state is S.READY
    with caplog.at_level(logging.DEBUG, logger="supervisor.lifecycle"):
        life.to(S.BUSY)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "app[0]: ready -> busy")
    ]


def test_states_hash_by_identity_and_work_as_keys() -> None:
    assert len({*ReplicaState, *ReplicaState}) == len(ReplicaState)
    assert {state: state.value for state in ReplicaState}[S.BUSY] == "busy"
