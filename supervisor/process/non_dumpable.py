"""Keep same-user processes out of the supervisor's memory and environment.

``/proc/<pid>/environ``, ``/proc/<pid>/mem`` and ptrace of a process are open to
every process of the same user, so a child running as the supervisor's user
could read the supervisor's environment (its tokens and cloud keys) or its
memory. ``PR_SET_DUMPABLE 0`` closes them to everything without
``CAP_SYS_PTRACE`` (and turns off core dumps of the supervisor). Root keeps
that capability, so a supervisor running as root needs children running as
another user (``Supervisor(child_user=...)``) for the same protection; the
command line (``/proc/<pid>/cmdline``) stays readable by every user whatever
this says, which is why secrets never belong there.

Standard library only: the tests load it under the distribution's Python.
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def _prctl(option: int, value: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, value, 0, 0, 0))


def make_non_dumpable() -> bool:
    """Make this process non-dumpable; False where the platform has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return _prctl(PR_SET_DUMPABLE, 0) == 0
    except (OSError, AttributeError):
        return False


def is_dumpable() -> bool:
    try:
        return sys.platform.startswith("linux") and _prctl(PR_GET_DUMPABLE) == 1
    except (OSError, AttributeError):
        return True
