"""The protocol's state machine, all in one table.

Both peers track the same state: the state of the app inside the child. Each
message either keeps the state or moves it, and a message that the table does
not list for the current state is a protocol error naming both. Requests (load,
setup, run) are tracked separately by id; see ``connection.py``.

    AWAITING_HELLO --hello(app=None)--> EMPTY --load--> LOADING --result--> LOADED
    AWAITING_HELLO --hello(app={..})--> LOADED           LOADING --error---> EMPTY
    LOADED --setup--> SETTING_UP --result--> READY;  SETTING_UP --error--> LOADED
    LOADED, SETTING_UP, READY --check--> (unchanged)
    any state after hello --unload--> UNLOADING --unloaded--> CLOSED
    any state --shutdown--> CLOSED
"""

from __future__ import annotations

from enum import Enum

from . import messages as m


class State(Enum):
    AWAITING_HELLO = "awaiting_hello"
    EMPTY = "empty"
    LOADING = "loading"
    LOADED = "loaded"
    SETTING_UP = "setting_up"
    READY = "ready"
    UNLOADING = "unloading"
    CLOSED = "closed"

    __hash__ = object.__hash__
    """Members are singletons compared by identity; Enum's own hash is Python code,
    and every message looks its state up in TRANSITIONS."""


S = State
_OPEN = (S.EMPTY, S.LOADING, S.LOADED, S.SETTING_UP, S.READY, S.UNLOADING)
"""States after the handshake and before the end."""

# (state, message type) -> next state. Messages that close a request (result,
# error) are listed under "keeps the state"; their effect on the state is in
# REQUEST_OUTCOMES because it depends on which request they close.
TRANSITIONS: dict[tuple[State, type[m.Message]], State] = {
    (S.EMPTY, m.Load): S.LOADING,
    (S.LOADED, m.Setup): S.SETTING_UP,
    (S.READY, m.Run): S.READY,
    **{(s, m.Check): s for s in (S.LOADED, S.SETTING_UP, S.READY)},
    **{(s, m.Unload): S.UNLOADING for s in _OPEN if s is not S.UNLOADING},
    **{(s, m.Shutdown): S.CLOSED for s in (S.AWAITING_HELLO, *_OPEN)},
    (S.UNLOADING, m.Unloaded): S.CLOSED,
    **{
        (s, t): s
        for s in _OPEN
        for t in (m.Cancel, m.Log, m.Progress, m.Partial, m.Pong, m.Release)
    },
    **{(s, t): s for s in _OPEN for t in (m.Result, m.Error)},
    **{(s, m.Ping): s for s in (S.AWAITING_HELLO, *_OPEN)},
    (S.AWAITING_HELLO, m.Error): S.AWAITING_HELLO,
}

# What the end of a request does to the state: (request type, succeeded) -> state.
REQUEST_OUTCOMES: dict[tuple[type[m.Message], bool], State] = {
    (m.Load, True): S.LOADED,
    (m.Load, False): S.EMPTY,
    (m.Setup, True): S.READY,
    (m.Setup, False): S.LOADED,
}


def after_hello(hello: m.Hello) -> State:
    return S.EMPTY if hello.app is None else S.LOADED
