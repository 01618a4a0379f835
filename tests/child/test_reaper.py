"""The reaper's last act: kill and reap what the app left behind, and only walk
``/proc`` for it when something was left. Each case runs in a process of its
own, since the function kills every descendant of the process that calls it.
(Detached processes, which need the reaper's subreaper role, are
``tests/supervisor/test_containment.py``'s.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil

SCRIPT = """
import subprocess, sys
from child import reaper

walks = []
walk = reaper.descendants
reaper.descendants = lambda root: walks.append(root) or walk(root)
left = []
if sys.argv[1] == "with-a-child":
    left.append(subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL).pid)
reaper.kill_descendants()
print(len(walks), *left)
"""


def _run(case: str) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), case],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [int(word) for word in done.stdout.split()]


def test_with_no_child_left_nothing_is_walked() -> None:
    assert _run("alone") == [0]


def test_a_child_left_behind_is_found_killed_and_reaped() -> None:
    walks, sleeper = _run("with-a-child")
    assert walks >= 1
    assert not psutil.pid_exists(sleeper)  # killed and reaped: no zombie either
