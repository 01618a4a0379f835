"""Die with the supervisor.

``PR_SET_PDEATHSIG`` makes the kernel send SIGKILL to this process when the
thread that spawned it exits, so a SIGKILLed supervisor leaves no orphans
behind. The setting races with the parent dying before it is made, which is
why the parent's pid (``SUPERVISOR_PARENT_PID``) is compared afterwards.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "SUPERVISOR_PARENT_PID"


def die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the running libc; find_library costs ms
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except OSError:
        return
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and expected.isdigit() and os.getppid() != int(expected):
        os._exit(1)
