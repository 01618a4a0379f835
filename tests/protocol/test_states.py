"""The transition table itself (the Connection's use of it is in test_connection.py)."""

from __future__ import annotations

import pytest

from protocol import messages as m
from protocol.states import REQUEST_OUTCOMES, TRANSITIONS, State, after_hello

S = State
OPEN = [S.EMPTY, S.LOADING, S.LOADED, S.SETTING_UP, S.READY, S.UNLOADING]
EVENTS = [m.Cancel, m.Log, m.Progress, m.Partial, m.Pong, m.Result, m.Error]


def test_state_values() -> None:
    assert [s.value for s in State] == [
        "awaiting_hello",
        "empty",
        "loading",
        "loaded",
        "setting_up",
        "ready",
        "unloading",
        "closed",
    ]


def test_table_is_well_formed() -> None:
    for (state, message_type), target in TRANSITIONS.items():
        assert isinstance(state, State)
        assert isinstance(target, State)
        assert message_type in m.MESSAGE_TYPES.values()


def test_hello_is_handled_outside_the_table() -> None:
    assert not any(t is m.Hello for _, t in TRANSITIONS)


def test_every_other_message_appears() -> None:
    used = {t for _, t in TRANSITIONS}
    assert used == set(m.MESSAGE_TYPES.values()) - {m.Hello}


def test_closed_is_final() -> None:
    assert not [key for key in TRANSITIONS if key[0] is S.CLOSED]


@pytest.mark.parametrize(
    ("request_type", "only_state", "target"),
    [(m.Load, S.EMPTY, S.LOADING), (m.Setup, S.LOADED, S.SETTING_UP), (m.Run, S.READY, S.READY)],
)
def test_requests_allowed_in_one_state(
    request_type: type[m.Message], only_state: State, target: State
) -> None:
    allowed = {s: t for (s, mt), t in TRANSITIONS.items() if mt is request_type}
    assert allowed == {only_state: target}


@pytest.mark.parametrize("state", [S.AWAITING_HELLO, *OPEN], ids=lambda s: s.value)
def test_shutdown_and_ping_allowed_until_closed(state: State) -> None:
    assert TRANSITIONS[(state, m.Shutdown)] is S.CLOSED
    assert TRANSITIONS[(state, m.Ping)] is state


@pytest.mark.parametrize("state", OPEN, ids=lambda s: s.value)
def test_unload(state: State) -> None:
    if state is S.UNLOADING:
        assert (state, m.Unload) not in TRANSITIONS
    else:
        assert TRANSITIONS[(state, m.Unload)] is S.UNLOADING


@pytest.mark.parametrize("state", OPEN, ids=lambda s: s.value)
@pytest.mark.parametrize("event", EVENTS, ids=lambda t: t.TYPE)
def test_events_keep_the_state(state: State, event: type[m.Message]) -> None:
    assert TRANSITIONS[(state, event)] is state


def test_before_hello() -> None:
    allowed = {t for (s, t) in TRANSITIONS if s is S.AWAITING_HELLO}
    assert allowed == {m.Shutdown, m.Ping, m.Error}
    assert TRANSITIONS[(S.AWAITING_HELLO, m.Error)] is S.AWAITING_HELLO


def test_unloaded_only_while_unloading() -> None:
    allowed = {s: t for (s, mt), t in TRANSITIONS.items() if mt is m.Unloaded}
    assert allowed == {S.UNLOADING: S.CLOSED}


def test_request_outcomes() -> None:
    assert {
        (m.Load, True): S.LOADED,
        (m.Load, False): S.EMPTY,
        (m.Setup, True): S.READY,
        (m.Setup, False): S.LOADED,
    } == REQUEST_OUTCOMES
    assert not [key for key in REQUEST_OUTCOMES if key[0] is m.Run]


@pytest.mark.parametrize(
    ("app", "state"),
    [(None, S.EMPTY), ({}, S.LOADED), ({"name": "x", "functions": {}}, S.LOADED)],
)
def test_after_hello(app: dict[str, object] | None, state: State) -> None:
    hello = m.Hello(protocol_version=m.PROTOCOL_VERSION, pid=1, runtime_version="v", app=app)
    assert after_hello(hello) is state


def test_every_state_reachable_and_closed_reachable_from_every_state() -> None:
    edges: dict[State, set[State]] = {s: set() for s in State}
    edges[S.AWAITING_HELLO] |= {S.EMPTY, S.LOADED}
    for (state, _), target in TRANSITIONS.items():
        edges[state].add(target)
    edges[S.LOADING] |= {REQUEST_OUTCOMES[(m.Load, ok)] for ok in (True, False)}
    edges[S.SETTING_UP] |= {REQUEST_OUTCOMES[(m.Setup, ok)] for ok in (True, False)}

    def reachable(start: State) -> set[State]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert reachable(S.AWAITING_HELLO) == set(State)
    for state in State:
        assert S.CLOSED in reachable(state)
