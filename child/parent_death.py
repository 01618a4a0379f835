"""Die with the supervisor.

``PR_SET_PDEATHSIG`` makes the kernel send SIGKILL to this process when the
thread that spawned it exits, so a SIGKILLed supervisor leaves no child
behind. That setting races with the parent dying before it is made, which is
why the parent's pid (``SUPERVISOR_PARENT_PID``) is compared afterwards.
What the app starts is ``child.reaper``'s business.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "SUPERVISOR_PARENT_PID"


def _prctl_death_signal(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the running libc; find_library costs ms
        return bool(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    if not sys.platform.startswith("linux") or not _prctl_death_signal(int(signal.SIGKILL)):
        return
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and expected.isdigit() and os.getppid() != int(expected):
        os._exit(1)
