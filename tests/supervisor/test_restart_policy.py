"""RestartPolicy.decide: immediate first restart, back-off, cap, giving up, forgetting."""

from __future__ import annotations

import pytest

from supervisor.core.restart_policy import GiveUp, Restart, RestartPolicy


def test_first_crash_restarts_at_once() -> None:
    policy = RestartPolicy()
    assert policy.decide([100.0], now=100.0) == Restart(0.0)


def test_first_delay_is_configurable() -> None:
    assert RestartPolicy(first_delay=0.5).decide([7.0], now=7.0) == Restart(0.5)


def test_back_off_doubles_from_base_delay() -> None:
    policy = RestartPolicy(max_restarts=10, window=60, base_delay=0.1, max_delay=100)
    crashes: list[float] = []
    delays = []
    for i in range(6):
        crashes.append(float(i))
        decision = policy.decide(crashes, now=float(i))
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8, 1.6])


def test_back_off_is_capped_at_max_delay() -> None:
    policy = RestartPolicy(max_restarts=50, window=1000, base_delay=1.0, max_delay=5.0)
    crashes = [float(i) for i in range(20)]
    decision = policy.decide(crashes, now=19.0)
    assert decision == Restart(5.0)
    delays = []
    for n in range(2, 12):
        d = policy.decide(crashes[:n], now=float(n - 1))
        assert isinstance(d, Restart)
        delays.append(d.delay)
    assert max(delays) == 5.0
    assert delays == sorted(delays), "back-off never shrinks while crashes accumulate"


def test_gives_up_past_max_restarts_in_window() -> None:
    policy = RestartPolicy(max_restarts=3, window=30)
    assert isinstance(policy.decide([1.0, 2.0, 3.0], now=3.0), Restart)
    decision = policy.decide([1.0, 2.0, 3.0, 4.0], now=4.0)
    assert isinstance(decision, GiveUp)
    assert "4 crashes" in decision.reason
    assert "30 s" in decision.reason
    assert "3 restarts" in decision.reason


def test_zero_max_restarts_gives_up_on_first_crash() -> None:
    assert isinstance(RestartPolicy(max_restarts=0).decide([5.0], now=5.0), GiveUp)


def test_crashes_older_than_window_are_forgotten() -> None:
    policy = RestartPolicy(max_restarts=2, window=10, base_delay=0.1)
    old = [0.0, 1.0, 2.0]
    # Three crashes within the window would give up...
    assert isinstance(policy.decide(old, now=2.0), GiveUp)
    # ...but long after them, a new crash is a first crash again.
    assert policy.decide([*old, 100.0], now=100.0) == Restart(0.0)
    # Partly forgotten: only the crashes within the window count towards back-off.
    assert policy.decide([0.0, 5.0, 11.0], now=11.0) == Restart(0.1)


def test_window_boundary_is_inclusive() -> None:
    policy = RestartPolicy(max_restarts=1, window=10)
    assert isinstance(policy.decide([0.0, 10.0], now=10.0), GiveUp)
    assert isinstance(policy.decide([0.0, 10.0], now=10.001), Restart)


def test_prune_keeps_only_the_window() -> None:
    policy = RestartPolicy(window=10)
    assert policy.prune([0.0, 5.0, 9.0, 15.0], now=15.0) == [5.0, 9.0, 15.0]
    assert policy.prune([], now=1.0) == []


def test_decide_is_pure() -> None:
    policy = RestartPolicy(max_restarts=2, window=60)
    crashes = [1.0, 2.0]
    first = policy.decide(crashes, now=2.0)
    assert policy.decide(crashes, now=2.0) == first
    assert crashes == [1.0, 2.0]


def test_after_exit_records_a_fault_and_decides() -> None:
    policy = RestartPolicy(max_restarts=1, window=60, base_delay=0.1)
    history, decision = policy.after_exit([], 10.0, fault=True)
    assert (history, decision) == ([10.0], Restart(0.0))
    history, decision = policy.after_exit(history, 11.0, fault=True)
    assert history == [10.0, 11.0] and isinstance(decision, GiveUp)


def test_after_exit_restarts_an_ordered_kill_at_once_without_counting_it() -> None:
    policy = RestartPolicy(max_restarts=1, window=60, first_delay=5.0)
    history, decision = policy.after_exit([10.0, 11.0], 12.0, fault=False)
    assert (history, decision) == ([10.0, 11.0], Restart(0.0))


def test_after_exit_forgets_faults_older_than_the_window() -> None:
    history, _ = RestartPolicy(window=60).after_exit([1.0, 50.0], 100.0, fault=True)
    assert history == [50.0, 100.0]
