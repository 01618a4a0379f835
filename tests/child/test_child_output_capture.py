"""Everything an app prints reaches the supervisor as ``log`` messages of the right
request, before that request's terminal message, and never corrupts the protocol.

The supervisor side here is ``protocol.Connection``, which rejects any stray
byte on the child's stdout and any log whose id is not an open request, so a
test that receives all its messages has also proven that the stream stayed
intact.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from child.log_capture import MAX_LINE
from protocol import Error, Log, Progress, Result

APPS = Path(__file__).resolve().parents[1] / "apps"

NOISE = [
    ("stdout", "py-out"),
    ("stderr", "py-err"),
    ("stdout", "fd-out"),
    ("stderr", "fd-err"),
    ("stdout", "sub-out"),
    ("stderr", "log-line"),
]
"""What tests/apps/child_noisy's ``make_noise`` writes: (stream, line)."""


def app(name: str) -> str:
    return str(APPS / name)


def logs_of(events: list, stream: str | None = None) -> list[Log]:
    return [e for e in events if isinstance(e, Log) and (stream is None or e.stream == stream)]


def assert_noise(events: list) -> None:
    lines = sorted((log.stream, log.message) for log in logs_of(events))
    assert lines == sorted(NOISE)


def test_setup_and_run_output_goes_to_their_requests(child):
    _, loaded = child.load(app("child_noisy"))
    assert isinstance(loaded, Result), loaded

    setup_events, done = child.setup()
    assert isinstance(done, Result), done
    assert_noise(setup_events)  # every path, attributed to the setup's id

    for function in ("run", "noise_sync"):  # an async function, then one in a thread
        events, result = child.run(function, {})
        assert isinstance(result, Result), result
        assert result.output == {"done": True}
        assert_noise(events)

    # nothing was left over, unattributed or misattributed
    stray = [m for m in child.received if isinstance(m, Log) and m.id is None]
    assert stray == []
    assert child.ping().seq >= 1
    child.unload()
    assert child.wait() == 0
    assert child.stderr_at_exit() == ""  # nothing leaked past the capture to the real fd 2


def test_metadata_log_and_progress(ready):
    driver = ready("child_noisy")
    for function in ("run", "noise_sync"):
        events, result = driver.run(function, {"log": "x", "progress": 0.5})
        assert isinstance(result, Result), result
        assert ("log", "x") in [(log.stream, log.message) for log in logs_of(events)]
        progress = [e for e in events if isinstance(e, Progress)]
        assert len(progress) == 1
        assert progress[0].fraction == 0.5
        assert progress[0].message == "half"


@pytest.mark.parametrize("function", ["marker", "marker_sync"])
def test_concurrent_runs_keep_their_output_apart(ready, function):
    driver = ready("child_noisy")
    slow = driver.start_run(function, {"marker": "slow", "count": 6, "delay": 0.05})
    fast = driver.start_run(function, {"marker": "fast", "count": 6, "delay": 0.02})
    outcome = driver.collect(slow, fast)
    for request, marker in ((slow, "slow"), (fast, "fast")):
        events, result = outcome[request]
        assert isinstance(result, Result), result
        assert result.output == {"marker": marker}
        assert [log.message for log in logs_of(events, "stdout")] == [
            f"{marker} {i}" for i in range(6)
        ]
        assert [log.message for log in logs_of(events, "log")] == [
            f"{marker} log {i}" for i in range(6)
        ]
    # they really overlapped: the fast run ended while the slow one was open
    order = [m.id for m in driver.received if isinstance(m, (Result, Error))]
    assert order[-2:] == [fast, slow]
    first_slow = next(i for i, m in enumerate(driver.received) if getattr(m, "id", None) == slow)
    fast_end = driver.received.index(outcome[fast][1])
    assert first_slow < fast_end


@pytest.mark.timeout(120)
def test_fifty_mib_of_logs_without_deadlock(ready):
    driver = ready("child_big")
    total = 50 * 1024 * 1024
    events, result = driver.run("flood", {"total": total, "line": 4095}, timeout=90)
    assert isinstance(result, Result), result
    output = result.output
    assert output["total_bytes"] >= total
    logs = logs_of(events, "stdout")
    assert len(logs) == output["lines"]
    assert sum(len(log.message) for log in logs) == output["chars"]
    assert sum(len(log.message) + 1 for log in logs) == output["total_bytes"]
    # every line arrived whole, once (print and fd 1 are two paths, so order may differ)
    indices = sorted(int(log.message[:8]) for log in logs)
    assert indices == list(range(output["lines"]))
    assert all(len(log.message) == 4095 for log in logs)
    assert driver.ping().seq >= 1


def test_long_lines_arrive_in_bounded_pieces(ready):
    driver = ready("child_big")
    print_chars, fd_chars = 200_000, 2 * MAX_LINE
    events, result = driver.run("long_lines", {"print_chars": print_chars, "fd_chars": fd_chars})
    assert isinstance(result, Result), result
    pieces = [log.message for log in logs_of(events, "stdout")]
    assert "" not in pieces  # no spurious empty line after a long one
    assert all(len(piece) <= MAX_LINE for piece in pieces)
    assert "".join(p for p in pieces if p.startswith("p")) == "p" * print_chars
    assert "".join(p for p in pieces if p.startswith("f")) == "f" * fd_chars
