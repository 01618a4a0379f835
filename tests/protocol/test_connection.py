"""The sans-I/O Connection: two in-memory peers pumping bytes at each other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.connection import EOF, NEED_DATA, Connection, Sentinel
from protocol.error_info import ErrorInfo, ErrorType
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.framing import encode_frames
from protocol.states import TRANSITIONS, State

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
S = State

APP = {
    "name": "echo",
    "functions": {
        "echo": {
            "description": "",
            "input_schema": {"type": "object"},
            "output_schema": {"type": "object"},
            "streaming": True,
            "extra": {},
        }
    },
    "setup_schema": None,
}


def hello(app: dict[str, Any] | None = None, version: int = m.PROTOCOL_VERSION) -> m.Hello:
    return m.Hello(protocol_version=version, pid=123, runtime_version="test", app=app)


def cancelled(request_id: str | None) -> m.Error:
    return m.Error(id=request_id, error=ErrorInfo(ErrorType.CANCELLED, "cancelled"))


def raw(message: m.Message) -> bytes:
    """The bytes of ``message``, bypassing every state check of the sender."""
    return b"".join(encode_frames(m.encode(message)))


class Pair:
    """A supervisor and a child connected back to back, in memory."""

    def __init__(self, **kwargs: Any) -> None:
        self.sup = Connection("supervisor", **kwargs)
        self.child = Connection("child", **kwargs)

    def sender(self, message: m.Message) -> Connection:
        return self.sup if message.TO_CHILD else self.child

    def receiver(self, message: m.Message) -> Connection:
        return self.child if message.TO_CHILD else self.sup

    def send(self, message: m.Message) -> list[bytes]:
        """Send without delivering (the message is in flight)."""
        return self.sender(message).send(message)

    def deliver(self, to: Connection, frames: list[bytes]) -> list[m.Message]:
        for frame in frames:
            to.receive_data(frame)
        return list(to.events())

    def exchange(self, message: m.Message) -> m.Message:
        """Send and deliver one message; return what the peer received."""
        received = self.deliver(self.receiver(message), self.send(message))
        assert received == [message]
        return received[0]

    def states(self) -> tuple[State, State]:
        return self.sup.state, self.child.state


def reach(state: State) -> Pair:
    """A pair whose peers both are in ``state``. Open requests: 'L', 'S' or none."""
    pair = Pair()
    scripts: dict[State, list[m.Message]] = {
        S.AWAITING_HELLO: [],
        S.EMPTY: [hello()],
        S.LOADING: [hello(), m.Load(id="L", app_dir="/app")],
        S.LOADED: [hello(APP)],
        S.SETTING_UP: [hello(APP), m.Setup(id="S")],
        S.READY: [hello(APP), m.Setup(id="S"), m.Result(id="S")],
        S.UNLOADING: [hello(APP), m.Setup(id="S"), m.Result(id="S"), m.Unload()],
        S.CLOSED: [hello(APP), m.Unload(), m.Unloaded()],
    }
    for message in scripts[state]:
        pair.exchange(message)
    assert pair.states() == (state, state)
    return pair


# -- happy paths --------------------------------------------------------------


def test_full_session() -> None:
    pair = Pair()
    assert pair.states() == (S.AWAITING_HELLO, S.AWAITING_HELLO)
    steps: list[tuple[m.Message, State]] = [
        (m.Ping(seq=0), S.AWAITING_HELLO),
        (hello(), S.EMPTY),
        (m.Pong(seq=0), S.EMPTY),
        (m.Log(id=None, stream="stderr", message="child up"), S.EMPTY),
        (m.Load(id="1", app_dir="/apps/echo", env={"A": "b"}), S.LOADING),
        (m.Log(id="1", stream="log", message="importing"), S.LOADING),
        (m.Result(id="1", output=APP), S.LOADED),
        (m.Setup(id="2", config={"size": 1}), S.SETTING_UP),
        (m.Log(id="2", stream="stdout", message="setting up"), S.SETTING_UP),
        (m.Result(id="2"), S.READY),
        (m.Run(id="3", function="echo", input={"text": "hi", "blob": b"\x00" * 10}), S.READY),
        (m.Log(id="3", stream="stdout", message="running"), S.READY),
        (m.Progress(id="3", fraction=0.5, current=1, total=2, message="half"), S.READY),
        (m.Partial(id="3", output={"text": "h"}), S.READY),
        (m.Ping(seq=1), S.READY),
        (m.Pong(seq=1), S.READY),
        (m.Partial(id="3", output={"text": "i"}), S.READY),
        (m.Result(id="3", output={"text": "hi"}), S.READY),
        (m.Unload(), S.UNLOADING),
        (m.Log(id=None, stream="log", message="unloading"), S.UNLOADING),
        (m.Unloaded(), S.CLOSED),
    ]
    for message, state in steps:
        received = pair.exchange(message)
        assert received == message
        assert pair.states() == (state, state), message
    assert pair.sup.requests == pair.child.requests == {}
    assert pair.sup.hello == pair.child.hello == hello()
    # The child exits: its stdout reaches end of file.
    pair.sup.receive_data(b"")
    assert pair.sup.next_event() is EOF


def test_hello_with_app_skips_load() -> None:
    pair = Pair()
    pair.exchange(hello(APP))
    assert pair.states() == (S.LOADED, S.LOADED)
    assert pair.sup.hello is not None and pair.sup.hello.app == APP


def test_requests_are_tracked() -> None:
    pair = reach(S.READY)
    pair.exchange(m.Run(id="a", function="echo", input={}))
    pair.exchange(m.Run(id="b", function="echo", input={}))
    assert pair.sup.requests == pair.child.requests == {"a": m.Run, "b": m.Run}
    pair.exchange(m.Result(id="b"))  # out of order is fine
    pair.exchange(m.Error(id="a", error=ErrorInfo(ErrorType.APP_EXCEPTION, "boom")))
    assert pair.sup.requests == pair.child.requests == {}
    # An id may be used again once its request has ended.
    pair.exchange(m.Run(id="a", function="echo", input={}))
    assert pair.sup.requests == {"a": m.Run}


@pytest.mark.parametrize(
    ("state", "request_id", "terminal", "after"),
    [
        (S.LOADING, "L", m.Result(id="L", output=APP), S.LOADED),
        (S.LOADING, "L", cancelled("L"), S.EMPTY),
        (S.SETTING_UP, "S", m.Result(id="S"), S.READY),
        (
            S.SETTING_UP,
            "S",
            m.Error(id="S", error=ErrorInfo(ErrorType.SETUP_FAILED, "no GPU")),
            S.LOADED,
        ),
    ],
)
def test_request_outcomes(state: State, request_id: str, terminal: m.Message, after: State) -> None:
    pair = reach(state)
    pair.exchange(m.Log(id=request_id, stream="stdout", message="working"))
    pair.exchange(terminal)
    assert pair.states() == (after, after)


@pytest.mark.parametrize("state", [S.EMPTY, S.LOADING, S.LOADED, S.SETTING_UP, S.READY])
def test_error_without_id_keeps_state(state: State) -> None:
    pair = reach(state)
    pair.exchange(m.Error(id=None, error=ErrorInfo(ErrorType.PROTOCOL, "bad frame")))
    assert pair.states() == (state, state)


def test_error_without_id_before_hello() -> None:
    pair = Pair()
    pair.exchange(m.Error(id=None, error=ErrorInfo(ErrorType.LOAD_FAILED, "no App")))
    assert pair.states() == (S.AWAITING_HELLO, S.AWAITING_HELLO)


@pytest.mark.parametrize("state", [S.AWAITING_HELLO, S.EMPTY, S.READY, S.UNLOADING])
def test_shutdown_closes(state: State) -> None:
    pair = reach(state)
    pair.exchange(m.Shutdown())
    assert pair.states() == (S.CLOSED, S.CLOSED)


# -- cancel and unload ----------------------------------------------------------


def test_cancel_of_unknown_id_is_allowed_and_changes_nothing() -> None:
    pair = reach(S.READY)
    pair.exchange(m.Run(id="r", function="echo", input={}))
    pair.exchange(m.Cancel(id="ghost"))
    assert pair.states() == (S.READY, S.READY)
    assert pair.child.requests == {"r": m.Run}


def test_cancel_crossing_the_result() -> None:
    pair = reach(S.READY)
    pair.exchange(m.Run(id="r", function="echo", input={}))
    to_child = pair.send(m.Cancel(id="r"))
    to_sup = pair.send(m.Result(id="r", output=1))  # the child finished meanwhile
    assert pair.deliver(pair.child, to_child) == [m.Cancel(id="r")]  # ignored: not open
    assert pair.deliver(pair.sup, to_sup) == [m.Result(id="r", output=1)]
    assert pair.sup.requests == pair.child.requests == {}


def test_cancelled_run() -> None:
    pair = reach(S.READY)
    pair.exchange(m.Run(id="r", function="echo", input={}))
    pair.exchange(m.Cancel(id="r"))
    pair.exchange(cancelled("r"))
    assert pair.sup.requests == pair.child.requests == {}
    assert pair.states() == (S.READY, S.READY)


@pytest.mark.parametrize(
    ("state", "request_id", "terminal"),
    [
        (S.LOADING, "L", cancelled("L")),
        (S.LOADING, "L", m.Result(id="L", output=APP)),
        (S.SETTING_UP, "S", cancelled("S")),
        (S.SETTING_UP, "S", m.Result(id="S")),
    ],
)
def test_unload_while_a_load_or_setup_is_open(
    state: State, request_id: str, terminal: m.Message
) -> None:
    """The end of a load or setup must not take either side out of UNLOADING."""
    pair = reach(state)
    pair.exchange(m.Unload())
    pair.exchange(terminal)
    assert pair.states() == (S.UNLOADING, S.UNLOADING)
    pair.exchange(m.Unloaded())
    assert pair.states() == (S.CLOSED, S.CLOSED)


@pytest.mark.parametrize(
    ("state", "terminal"),
    [(S.LOADING, m.Result(id="L", output=APP)), (S.SETTING_UP, m.Error(
        id="S", error=ErrorInfo(ErrorType.SETUP_FAILED, "x")))],
)  # fmt: skip
def test_unload_crossing_the_end_of_a_load_or_setup(state: State, terminal: m.Message) -> None:
    """The supervisor sends unload while the child's terminal message is in flight."""
    pair = reach(state)
    to_child = pair.send(m.Unload())
    to_sup = pair.send(terminal)
    assert pair.child.state is not S.UNLOADING  # the child moved on first...
    pair.deliver(pair.child, to_child)
    pair.deliver(pair.sup, to_sup)
    assert pair.states() == (S.UNLOADING, S.UNLOADING)  # ...but both agree now
    pair.exchange(m.Unloaded())
    assert pair.states() == (S.CLOSED, S.CLOSED)


def test_unload_with_running_requests() -> None:
    pair = reach(S.READY)
    pair.exchange(m.Run(id="a", function="echo", input={}))
    pair.exchange(m.Run(id="b", function="echo", input={}))
    pair.exchange(m.Unload())
    pair.exchange(m.Progress(id="a", fraction=0.9))
    pair.exchange(m.Result(id="a", output={}))
    pair.exchange(cancelled("b"))
    pair.exchange(m.Ping(seq=9))
    pair.exchange(m.Pong(seq=9))
    pair.exchange(m.Unloaded())
    assert pair.states() == (S.CLOSED, S.CLOSED)
    assert pair.sup.requests == {}


# -- illegal messages -----------------------------------------------------------

LOG = m.Log(id=None, stream="stdout", message="x")
PROGRESS_R = m.Progress(id="r", fraction=0.1)

# (state, message, reason): each message travels in its legal direction but is not
# allowed there. Open requests in these states: LOADING has 'L', SETTING_UP has 'S'.
ILLEGAL: list[tuple[State, m.Message, str]] = [
    (S.AWAITING_HELLO, m.Load(id="x", app_dir="/a"), "not allowed in state awaiting_hello"),
    (S.AWAITING_HELLO, m.Setup(id="x"), "not allowed in state awaiting_hello"),
    (S.AWAITING_HELLO, m.Run(id="x", function="f", input={}), "not allowed"),
    (S.AWAITING_HELLO, m.Cancel(id="x"), "not allowed in state awaiting_hello"),
    (S.AWAITING_HELLO, m.Unload(), "'unload' is not allowed in state awaiting_hello"),
    (S.AWAITING_HELLO, LOG, "'log' is not allowed in state awaiting_hello"),
    (S.AWAITING_HELLO, m.Pong(seq=1), "'pong' is not allowed in state awaiting_hello"),
    (S.AWAITING_HELLO, m.Unloaded(), "not allowed in state awaiting_hello"),
    (S.AWAITING_HELLO, m.Result(id="x"), "not allowed in state awaiting_hello"),
    (S.AWAITING_HELLO, cancelled("x"), "'error' for unknown request 'x'"),
    (S.EMPTY, hello(), "hello in state empty"),
    (S.EMPTY, m.Setup(id="x"), "'setup' is not allowed in state empty"),
    (S.EMPTY, m.Run(id="x", function="f", input={}), "'run' is not allowed in state empty"),
    (S.EMPTY, m.Unloaded(), "'unloaded' is not allowed in state empty"),
    (S.EMPTY, m.Result(id="x"), "'result' for unknown request 'x'"),
    (S.LOADING, m.Load(id="y", app_dir="/a"), "'load' is not allowed in state loading"),
    (S.LOADING, m.Setup(id="y"), "'setup' is not allowed in state loading"),
    (S.LOADING, m.Run(id="y", function="f", input={}), "not allowed in state loading"),
    (S.LOADING, m.Progress(id="L"), "'progress' for 'L', which is not a running run or setup"),
    (S.LOADING, m.Partial(id="L", output=1), "'partial' for 'L', which is not a running"),
    (S.LOADED, hello(APP), "hello in state loaded"),
    (S.LOADED, m.Load(id="y", app_dir="/a"), "'load' is not allowed in state loaded"),
    (S.LOADED, m.Run(id="y", function="f", input={}), "'run' is not allowed in state loaded"),
    (S.SETTING_UP, m.Setup(id="y"), "'setup' is not allowed in state setting_up"),
    (S.SETTING_UP, m.Run(id="y", function="f", input={}), "not allowed in state setting_up"),
    (S.SETTING_UP, m.Progress(id="x"), "'progress' for 'x', which is not a running run or"),
    (S.SETTING_UP, m.Partial(id="S", output=None), "'partial' for 'S'"),
    (S.READY, m.Load(id="y", app_dir="/a"), "'load' is not allowed in state ready"),
    (S.READY, m.Setup(id="y"), "'setup' is not allowed in state ready"),
    (S.READY, m.Unloaded(), "'unloaded' is not allowed in state ready"),
    (S.READY, PROGRESS_R, "'progress' for 'r', which is not a running run or setup"),
    (S.READY, m.Partial(id="r", output=1), "'partial' for 'r', which is not a running"),
    (S.READY, m.Log(id="S", stream="log", message="late"), "log for 'S', which is not an open"),
    (S.READY, m.Result(id="S"), "'result' for unknown request 'S'"),
    (S.READY, cancelled("S"), "'error' for unknown request 'S'"),
    (S.UNLOADING, m.Unload(), "'unload' is not allowed in state unloading"),
    (S.UNLOADING, m.Run(id="y", function="f", input={}), "not allowed in state unloading"),
    (S.UNLOADING, m.Load(id="y", app_dir="/a"), "'load' is not allowed in state unloading"),
    (S.UNLOADING, m.Setup(id="y"), "'setup' is not allowed in state unloading"),
    (S.CLOSED, m.Ping(seq=1), "'ping' is not allowed in state closed"),
    (S.CLOSED, m.Cancel(id="x"), "'cancel' is not allowed in state closed"),
    (S.CLOSED, m.Shutdown(), "'shutdown' is not allowed in state closed"),
    (S.CLOSED, m.Unload(), "'unload' is not allowed in state closed"),
    (S.CLOSED, LOG, "'log' is not allowed in state closed"),
    (S.CLOSED, m.Pong(seq=1), "'pong' is not allowed in state closed"),
    (S.CLOSED, m.Unloaded(), "'unloaded' is not allowed in state closed"),
    (S.CLOSED, m.Error(id=None, error=ErrorInfo(ErrorType.PROTOCOL, "x")), "not allowed"),
]


def illegal_id(case: tuple[State, m.Message, str]) -> str:
    return f"{case[0].value}-{case[1].TYPE}"


@pytest.mark.parametrize("case", ILLEGAL, ids=illegal_id)
def test_illegal_send_raises_local_error(case: tuple[State, m.Message, str]) -> None:
    state, message, reason = case
    pair = reach(state)
    sender = pair.sender(message)
    before = (sender.state, dict(sender.requests))
    with pytest.raises(LocalProtocolError, match=reason):
        sender.send(message)
    assert (sender.state, sender.requests) == before


@pytest.mark.parametrize("case", ILLEGAL, ids=illegal_id)
def test_illegal_receive_raises_remote_error(case: tuple[State, m.Message, str]) -> None:
    state, message, reason = case
    pair = reach(state)
    receiver = pair.receiver(message)
    receiver.receive_data(raw(message))
    with pytest.raises(RemoteProtocolError, match=reason) as first:
        receiver.next_event()
    # The connection is unusable from now on.
    with pytest.raises(RemoteProtocolError) as again:
        receiver.next_event()
    assert again.value is first.value


def _example(message_type: type[m.Message]) -> m.Message:
    examples: dict[type[m.Message], m.Message] = {
        m.Load: m.Load(id="new", app_dir="/a"),
        m.Setup: m.Setup(id="new"),
        m.Run: m.Run(id="new", function="f", input={}),
        m.Check: m.Check(id="new", config={}),
        m.Cancel: m.Cancel(id="new"),
        m.Unload: m.Unload(),
        m.Shutdown: m.Shutdown(),
        m.Ping: m.Ping(seq=1),
        m.Log: LOG,
        m.Progress: PROGRESS_R,
        m.Partial: m.Partial(id="r", output=0),
        m.Result: m.Result(id="new"),
        m.Error: cancelled("new"),
        m.Unloaded: m.Unloaded(),
        m.Pong: m.Pong(seq=1),
        m.Release: m.Release(upto=0),
    }
    return examples[message_type]


NOT_IN_TABLE = [
    (state, t)
    for state in State
    for t in m.MESSAGE_TYPES.values()
    if t is not m.Hello and (state, t) not in TRANSITIONS
]


@pytest.mark.parametrize(
    ("state", "message_type"), NOT_IN_TABLE, ids=[f"{s.value}-{t.TYPE}" for s, t in NOT_IN_TABLE]
)
def test_everything_outside_the_table_is_refused(
    state: State, message_type: type[m.Message]
) -> None:
    message = _example(message_type)
    pair = reach(state)
    with pytest.raises(LocalProtocolError, match="is not allowed in state"):
        pair.sender(message).send(message)
    receiver = pair.receiver(message)
    receiver.receive_data(raw(message))
    with pytest.raises(RemoteProtocolError, match="is not allowed in state"):
        receiver.next_event()


ONE_WAY = [t for t in m.MESSAGE_TYPES.values() if not t.BOTH_WAYS]


@pytest.mark.parametrize("message_type", ONE_WAY, ids=lambda t: t.TYPE)
def test_wrong_direction(message_type: type[m.Message]) -> None:
    message = hello() if message_type is m.Hello else _example(message_type)
    pair = reach(S.READY)
    wrong_sender = pair.child if message.TO_CHILD else pair.sup
    direction = "to the child" if message.TO_CHILD else "to the supervisor"
    with pytest.raises(LocalProtocolError, match=f"'{message.TYPE}' travels only {direction}"):
        wrong_sender.send(message)
    # The same message arriving at the side that would have sent it.
    wrong_receiver = pair.sender(message)
    wrong_receiver.receive_data(raw(message))
    with pytest.raises(RemoteProtocolError, match=f"travels only {direction}"):
        wrong_receiver.next_event()


@pytest.mark.parametrize(
    "second",
    [
        m.Run(id="dup", function="f", input={}),
        m.Run(id="dup", function="other", input={"x": 1}),
    ],
)
def test_duplicate_request_id(second: m.Run) -> None:
    """Only runs can be open together, so only they can collide."""
    pair = reach(S.READY)
    pair.exchange(m.Run(id="dup", function="f", input={}))
    with pytest.raises(LocalProtocolError, match="request id 'dup' is already in use"):
        pair.sup.send(second)
    assert pair.sup.requests == {"dup": m.Run}
    pair.child.receive_data(raw(second))
    with pytest.raises(RemoteProtocolError, match="request id 'dup' is already in use"):
        pair.child.next_event()


@pytest.mark.parametrize(
    "message",
    [
        m.Result(id="nope"),
        cancelled("nope"),
        m.Progress(id="nope"),
        m.Partial(id="nope", output=1),
        m.Log(id="nope", stream="stdout", message="x"),
    ],
    ids=lambda msg: msg.TYPE,
)
def test_unknown_request_id(message: m.Message) -> None:
    pair = reach(S.READY)
    pair.exchange(m.Run(id="r", function="f", input={}))
    with pytest.raises(LocalProtocolError, match="'nope'"):
        pair.child.send(message)
    pair.sup.receive_data(raw(message))
    with pytest.raises(RemoteProtocolError, match="'nope'"):
        pair.sup.next_event()


def test_progress_for_a_setup_id() -> None:
    """A setup reports progress (a model loading); a load does not."""
    pair = reach(S.SETTING_UP)
    pair.exchange(m.Log(id="S", stream="stdout", message="log is fine"))
    pair.exchange(m.Progress(id="S", fraction=0.5, message="weights"))
    pair.exchange(m.Result(id="S"))
    assert pair.sup.state is S.READY


def test_events_for_a_finished_run() -> None:
    pair = reach(S.READY)
    pair.exchange(m.Run(id="r", function="f", input={}))
    pair.exchange(m.Result(id="r"))
    for late in (m.Log(id="r", stream="stdout", message="late"), m.Progress(id="r")):
        with pytest.raises(LocalProtocolError):
            pair.child.send(late)


@pytest.mark.parametrize("version", [0, 2, m.PROTOCOL_VERSION + 1, -1])
def test_version_mismatch(version: int) -> None:
    pair = Pair()
    bad = hello(version=version)
    with pytest.raises(LocalProtocolError, match=f"protocol version {version} is not supported"):
        pair.child.send(bad)
    assert pair.child.state is S.AWAITING_HELLO
    pair.sup.receive_data(raw(bad))
    with pytest.raises(RemoteProtocolError, match=f"protocol version {version} is not supported"):
        pair.sup.next_event()
    assert pair.sup.hello is None


def test_send_that_cannot_be_encoded_changes_nothing() -> None:
    pair = reach(S.READY)
    with pytest.raises(TypeError, match="cannot encode"):
        pair.sup.send(m.Run(id="r", function="f", input={"x": object()}))
    assert pair.sup.requests == {}
    # The id is still free, and the peers still agree.
    pair.exchange(m.Run(id="r", function="f", input={"x": 1}))
    assert pair.sup.requests == pair.child.requests == {"r": m.Run}


# -- bytes and end of file --------------------------------------------------------


def test_need_data_until_the_message_is_complete() -> None:
    pair = Pair()
    data = raw(hello(APP))
    for i in range(len(data) - 1):
        pair.sup.receive_data(data[i : i + 1])
        assert pair.sup.next_event() is NEED_DATA
    pair.sup.receive_data(data[-1:])
    assert pair.sup.next_event() == hello(APP)
    assert pair.sup.next_event() is NEED_DATA


def test_several_messages_in_one_chunk() -> None:
    pair = reach(S.READY)
    pair.exchange(m.Run(id="r", function="f", input={}))
    messages: list[m.Message] = [
        m.Log(id="r", stream="stdout", message=str(i)) for i in range(5)
    ] + [m.Result(id="r", output=5)]
    chunk = b"".join(b"".join(pair.child.send(msg)) for msg in messages)
    pair.sup.receive_data(chunk)
    assert list(pair.sup.events()) == messages


def test_large_message_is_split_by_send() -> None:
    pair = Pair(max_frame_size=1024)
    pair.exchange(hello(APP))
    pair.exchange(m.Setup(id="S"))
    pair.exchange(m.Result(id="S"))
    run = m.Run(id="r", function="f", input={"blob": bytes(range(256)) * 40})
    frames = pair.sup.send(run)
    assert len(frames) > 2
    assert pair.deliver(pair.child, frames) == [run]


def test_receiver_frame_limit() -> None:
    small = Connection("supervisor", max_frame_size=64)
    small.receive_data(raw(hello({"name": "x" * 100})))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 64"):
        small.next_event()


def test_receiver_message_limit() -> None:
    small = Connection("supervisor", max_frame_size=16, max_message_size=32)
    small.receive_data(b"".join(encode_frames(m.encode(hello()), 16)))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 32"):
        small.next_event()


def test_clean_eof() -> None:
    pair = Pair()
    pair.sup.receive_data(raw(hello()) + raw(m.Pong(seq=1)))
    pair.sup.receive_data(b"")
    assert pair.sup.next_event() == hello()
    assert pair.sup.next_event() == m.Pong(seq=1)
    assert pair.sup.next_event() is EOF
    assert pair.sup.next_event() is EOF  # and stays there
    assert list(pair.sup.events()) == []
    with pytest.raises(RuntimeError, match="after end of file"):
        pair.sup.receive_data(b"more")


def test_eof_before_anything() -> None:
    child = Connection("child")
    child.receive_data(b"")
    assert child.next_event() is EOF


@pytest.mark.parametrize(
    "partial",
    [
        raw(m.Ping(seq=1))[:2],  # half a header
        raw(m.Ping(seq=1))[:4],  # a header, no payload
        raw(m.Ping(seq=1))[:-1],  # all but one byte
        b"".join(encode_frames(m.encode(m.Ping(seq=1)), 5))[:9],  # a whole MORE frame
    ],
    ids=["half-header", "header-only", "short-payload", "after-more-frame"],
)
def test_eof_inside_a_message(partial: bytes) -> None:
    child = Connection("child")
    child.receive_data(partial)
    assert child.next_event() is NEED_DATA
    child.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="end of file inside a message"):
        child.next_event()


def test_garbage_payload_is_remote_error() -> None:
    sup = Connection("supervisor")
    sup.receive_data(b"\x00\x00\x00\x03abc")
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        sup.next_event()


def test_connection_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        Connection("child", max_frame_size=0)
    with pytest.raises(ValueError):
        Connection("child", max_message_size=0)


# -- fuzzing ------------------------------------------------------------------------


def drain(conn: Connection) -> None:
    """Pull events until the connection wants data, ends, or breaks (RemoteProtocolError)."""
    for _ in range(10_000):
        event = conn.next_event()
        if isinstance(event, Sentinel):
            return
        assert isinstance(event, m.Message)
    raise AssertionError("next_event never stopped")


def feed_all(conn: Connection, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            if chunk:
                conn.receive_data(chunk)
                drain(conn)
        conn.receive_data(b"")
        drain(conn)
        assert conn.next_event() is EOF
    except RemoteProtocolError:
        # Once broken, it stays broken with the same kind of error.
        with pytest.raises(RemoteProtocolError):
            conn.next_event()


STARTS: dict[str, Callable[[], Connection]] = {
    "supervisor-new": lambda: Connection("supervisor"),
    "child-new": lambda: Connection("child"),
    "supervisor-ready": lambda: reach(S.READY).sup,
    "child-ready": lambda: reach(S.READY).child,
}


@FAST
@given(start=st.sampled_from(sorted(STARTS)), chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_random_bytes(start: str, chunks: list[bytes]) -> None:
    feed_all(STARTS[start](), chunks)


scalars = (
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3) | st.binary(max_size=3)
)
field_values = st.recursive(
    scalars | st.sampled_from(["r", "S", "L", "stdout"]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=8,
)
ERROR_MAP = {"type": "cancelled", "message": "m"}
field_names = sorted(
    {name for cls in m.MESSAGE_TYPES.values() for name in cls.__dataclass_fields__}
)
message_maps = st.builds(
    lambda name, fields: {"type": name, **fields},
    st.sampled_from(sorted(m.MESSAGE_TYPES)),
    st.dictionaries(
        st.sampled_from(field_names), field_values | st.just(ERROR_MAP) | st.just(1), max_size=5
    ),
)


@FAST
@given(
    start=st.sampled_from(sorted(STARTS)),
    maps=st.lists(message_maps, max_size=6),
    frame_size=st.integers(1, 40),
    cut=st.integers(1, 50),
)
def test_fuzz_framed_message_like_maps(
    start: str, maps: list[dict[str, Any]], frame_size: int, cut: int
) -> None:
    """Well-framed msgpack maps with real types and field names reach the state machine."""
    data = b"".join(b"".join(encode_frames(msgpack.packb(w), frame_size)) for w in maps)
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    feed_all(STARTS[start](), chunks)
